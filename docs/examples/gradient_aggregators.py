"""Two conflicting objectives' gradients, and what each aggregator makes of them."""

import torch

from steerl.objectives import aggregate, make_weighting

# rows: gradients of two objectives w.r.t. three shared parameters. They conflict, and the
# second is larger: the plain sum would increase the first loss (<d, g1> < 0).
J = torch.tensor([[1.0, 0.0, 0.0], [-2.0, 0.5, 0.0]])
cos = torch.nn.functional.cosine_similarity(J[0], J[1], dim=0)
print(f"cosine between the two gradients: {cos:.3f}")
print(f"{'aggregator':10s} {'weights':>16s}   <d, g1>  <d, g2>")
for name in ["pcgrad", "mgda", "upgrad", "cagrad", "nash_mtl", "imtl_g"]:
    d, w = aggregate(J, make_weighting(name, backend="builtin"))
    dots = J @ d
    print(
        f"{name:10s} {str([round(float(x), 3) for x in w]):>16s}   {dots[0]:+.3f}   {dots[1]:+.3f}"
    )
print("plain sum: <d, g> =", [round(float(x), 3) for x in J @ J.sum(0)])
