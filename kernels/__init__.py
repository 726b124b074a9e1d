"""Our own sparse kernels (what spconv lacks or does slowly), each with a plain-PyTorch twin.

- ``gather``: row gathers with a sentinel index (masked / outside neighbours read a fill row);
- ``tiles``: each visible patch's block with a halo of neighbour sites, for dense tile kernels;
- ``tile_conv``: a dense k×k conv (or max-pool) on halo tiles, what the ``tiles`` backend runs;
- ``rows_linear``: the convs that are one matmul on the rows: 1×1 convs (``F.linear``, or the rows
  as a 1×1 conv for oneDNN / cuDNN) and patchify convs;
- ``max_pool``: SparK's masked-dense max-pool on halo tiles or on the window table;
- ``depthwise_conv``: the dense depthwise conv with a fast weight gradient on the CPU (twin:
  ``F.conv2d``);
- ``depthwise``: sparse depthwise k×k conv — twin (``depthwise_table``, on ``depthwise_table.py``'s
  Function), ``depthwise_tiles``, ``depthwise_dense``, ``depthwise_triton`` (its Triton kernels,
  ``depthwise_triton.py``; ``triton_support.py`` says whether they can run);
Which function runs a layer is the router's choice (spark_sparse/routing/, its table ``RUN``).

Lives at the top of the source tree and imports as ``spark_sparse.kernels`` (setup.py's
``package_dir``; in a plain checkout, see spark_sparse/__init__.py), so no top-level ``kernels``
package is ever installed.
"""
