import torch, time, torch.nn.functional as F
from spark_sparse.kernels.rows_linear import rows_conv1x1
torch.set_num_threads(2)
def bench(f, n=7):
    f(); f(); ts=[]
    for _ in range(n):
        t=time.perf_counter(); f(); ts.append(time.perf_counter()-t)
    ts.sort(); return ts[n//2]*1e3
tot={}
for M,C in [(20480,96),(5120,192),(1280,384),(320,768)]:
  for cin,cout in [(C,4*C),(4*C,C)]:
   for dt in [torch.float32, torch.bfloat16]:
    x=torch.randn(M,cin).to(dt).requires_grad_(); w=torch.randn(cout,cin).to(dt).requires_grad_(); b=torch.randn(cout).to(dt).requires_grad_()
    g=torch.randn(M,cout).to(dt)
    def lin(): F.linear(x,w,b).backward(g)
    def conv(): rows_conv1x1(x,w,b).backward(g)
    a,c=bench(lin),bench(conv)
    tot.setdefault(dt,[0,0]); tot[dt][0]+=a*(9 if C==384 else 3); tot[dt][1]+=c*(9 if C==384 else 3)
    print(M,cin,cout,dt, "linear fwdbwd", round(a,2), "conv1x1", round(c,2), f"{a/c:.2f}x")
print({str(k):[round(v[0]),round(v[1])] for k,v in tot.items()})
