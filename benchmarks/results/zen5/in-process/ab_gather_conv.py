import torch, timm, time, statistics
import spark_sparse as ss
from spark_sparse.layers.conv import SparseConv2d
torch.set_num_threads(2); torch.manual_seed(0)
enc = ss.sparsify(timm.create_model("resnet50")).set_routing("measured")
x = torch.randn(16, 3, 224, 224)
from spark_sparse.masks import random_visible
vis = random_visible(16, (7, 7), 0.6, generator=torch.Generator().manual_seed(0)) if True else None
def step():
    out = enc(x, vis); sum(o.float().sum() for o in out).backward()
for _ in range(20):
    step()
print(ss.routing.tuning_stats())
routes = {}
for p, m in enc.named_modules():
    if isinstance(m, SparseConv2d):
        m.register_forward_pre_hook(lambda m, a, p=p: routes.__setitem__(p, m.route_for(a[0]).implementation))
step()
gc = [p for p, r in routes.items() if r == "gather-conv"]
print("gather-conv layers:", gc)
mods = dict(enc.named_modules())
def setreq(r):
    for p in gc: mods[p].requested = r
res = {"gather-conv": [], "torch": []}
for i in range(9):
    for r in ("gather-conv", "torch"):
        setreq(r); t = time.perf_counter(); step(); res[r].append(time.perf_counter() - t)
for r, v in res.items(): print(r, round(statistics.median(v) * 1e3), [round(a * 1e3) for a in v])
print("paired ratio", statistics.median([b / a for a, b in zip(res["gather-conv"], res["torch"])]))
