"""A user reward plug-in: name it in a recipe as ``examples.my_rewards:short_and_correct``.

Any function with the reward protocol works; nothing needs registering::

    rewards:
      - name: exact_match
      - name: examples.my_rewards:short_and_correct
        weight: 0.5
        args: {max_len: 4}
"""

from __future__ import annotations


def short_and_correct(prompts, completions, answer, max_len: int = 4, **fields):
    """1.0 for a correct answer no longer than ``max_len`` characters, 0.5 if only correct."""
    out = []
    for completion, ans in zip(completions, answer):
        if ans is None:
            out.append(None)  # cannot score: excluded from the advantage, counted in the logs
            continue
        text = completion.strip()
        correct = text == str(ans).strip()
        out.append((1.0 if len(text) <= max_len else 0.5) if correct else 0.0)
    return out
