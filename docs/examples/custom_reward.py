"""A custom reward next to the built-ins: write a function, register it, score completions."""

from steerl.config import RewardSpec
from steerl.rewards import build_rewards, reward


@reward("answer_length")
def answer_length(prompts, completions, answer, max_len: int = 4, **fields):
    """1.0 for a correct answer no longer than max_len characters, 0.5 if longer, else 0."""
    out = []
    for text, gold in zip(completions, answer):
        if gold is None:
            out.append(None)  # could not score: zero advantage, counted as unscored
        elif text.strip() != gold:
            out.append(0.0)
        else:
            out.append(1.0 if len(text.strip()) <= max_len else 0.5)
    return out


rewards = build_rewards(
    [
        RewardSpec(name="exact_match"),
        RewardSpec(name="answer_length", weight=0.5, args={"max_len": 2}),
        RewardSpec(name="format", weight=0.1, args={"pattern": r"\d+"}),
    ]
)
prompts = ["74+58=", "3+4=", "21+43="]
completions = ["231", "7", "46!"]
result = rewards.score(prompts, completions, {"answer": ["231", "7", "64"]}, step=0)
print("rewards:", result.names)
print("scores:\n", result.scores)
print("combined:", rewards.combined(result).tolist())
print({k: round(v, 3) for k, v in result.metrics.items() if k.endswith("/mean")})
