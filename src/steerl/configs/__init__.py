"""The sections of the recipe config, one module per section (or small group of sections).

``steerl.config`` assembles them into ``Config`` and re-exports every name, so
``from steerl.config import LossConfig`` keeps working. Section modules import only
pydantic, the standard library, ``steerl.config_base`` and each other: never
``steerl.config`` or a component package at import time.
"""
