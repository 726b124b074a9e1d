import torch, timm, time, statistics
import spark_sparse as ss
from spark_sparse.layers.linear import SparseLinear
from spark_sparse.masks import random_visible
torch.set_num_threads(2); torch.manual_seed(0)
enc = ss.sparsify(timm.create_model("convnext_tiny")).set_routing("measured")
x = torch.randn(16, 3, 224, 224)
vis = random_visible(16, (7, 7), 0.6, generator=torch.Generator().manual_seed(0))
def step():
    out = enc(x, vis); sum(o.float().sum() for o in out).backward()
for _ in range(16):
    step()
print(ss.routing.tuning_stats())
lin = [m for m in enc.modules() if isinstance(m, SparseLinear)]
def setreq(r):
    for m in lin: m.requested = r
res = {"auto": [], "matmul": []}
for i in range(9):
    for r in res:
        setreq(r); t = time.perf_counter(); step(); res[r].append(time.perf_counter() - t)
for r, v in res.items(): print(r, round(statistics.median(v) * 1e3), [round(a * 1e3) for a in v])
print("paired ratio", statistics.median([b / a for a, b in zip(res["auto"], res["matmul"])]))
