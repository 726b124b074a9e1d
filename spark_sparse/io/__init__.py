"""Files in and out: the pre-training checkpoint format, and timm or SparK weights imported as one
(atomic writes and integrity checks: spark_sparse.files).

Above the model (it builds SparK models from checkpoints) and below the commands and the training
loop, which read and write checkpoints through it and never the other way round.
"""
