"""Our own sparse kernels (what spconv lacks or does slowly), each with a plain-PyTorch twin.

- ``gather``: row gathers with a sentinel index (masked / outside neighbours read a fill row);
- ``tiles``: each visible patch's block with a halo of neighbour sites, for dense tile kernels;
- ``depthwise``: sparse depthwise k×k conv — twin (``table``), ``tiles``, ``dense`` (which one runs a
  layer is the router's choice, spark_sparse/routing/); ``depthwise_triton``: its Triton kernels.

Lives at the top of the source tree and imports as ``spark_sparse.kernels`` (a symlink inside the
package), so no top-level ``kernels`` package is ever installed.
"""
