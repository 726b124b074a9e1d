"""Our own sparse kernels (what spconv lacks or does slowly), each with a plain-PyTorch twin.

Lives at the top of the source tree and imports as ``spark_sparse.kernels`` (a symlink inside the
package), so no top-level ``kernels`` package is ever installed.
"""
