"""Our own sparse kernels (what spconv lacks or does slowly), each with a plain-PyTorch twin.

- ``gather``: row gathers with a sentinel index (masked / outside neighbours read a fill row);
- ``tiles``: each visible patch's block with a halo of neighbour sites, for dense tile kernels;
- ``tile_conv``: a dense k×k conv (or max-pool) on halo tiles, what the ``tiles`` backend runs;
- ``rows_linear``: the matmul of 1×1 convs on the rows, as oneDNN's 1×1 conv on the CPU where that
  is faster (twin: ``F.linear``);
- ``depthwise_conv``: the dense depthwise conv with a fast weight gradient on the CPU (twin:
  ``F.conv2d``);
- ``depthwise``: sparse depthwise k×k conv — twin (``table``, in ``depthwise_table``), ``tiles``,
  ``dense`` (which one runs a layer is the router's choice, spark_sparse/routing/);
  ``depthwise_triton``: its Triton kernels.

Lives at the top of the source tree and imports as ``spark_sparse.kernels`` (setup.py's
``package_dir``; in a plain checkout, see spark_sparse/__init__.py), so no top-level ``kernels``
package is ever installed.
"""
