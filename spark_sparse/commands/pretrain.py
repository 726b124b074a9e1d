"""SparK pre-training of a timm backbone with a sparse encoder (the encoder computes only the visible
patches). With no arguments: a ResNet-18 at 96 px on the embedded photographs, a few minutes on a
CPU, leaving checkpoints, TensorBoard logs and reconstruction PNGs in runs/pretrain/.

SparK's ImageNet recipe: --data /path/to/imagenet/train --arch resnet50 --input-size 224
--batch-size 4096 --epochs 1600 --warmup-epochs 40 (LAMB, lr 2e-4 × batch/256, cosine schedules and
clipping are the defaults). Several GPUs or nodes: launch the same command under
`python -m spark_sparse.train.launch --nproc_per_node N -m spark_sparse.cli pretrain ...` (torchrun
with an exit status of 143 after SIGTERM; plain torchrun works too).

Re-running the same command continues from the newest valid checkpoint of this run in --out; a run
prunes only checkpoints it wrote, and refuses an --out holding another run unless --force. Exit
status: 0 done, 2 refused before training (bad options or --out), 3 the loss or gradient became
NaN/infinite (the last good checkpoint is kept), 143 / 130 stopped by SIGTERM / SIGINT after saving
a checkpoint (a second Ctrl-C: at once, without one), 1 any other error (the run exits at once, data
workers included; a data set that cannot be read, a dead data worker or no batch within
--data-timeout are said in one line)."""
from __future__ import annotations

NAME = "pretrain"
HELP = "SparK pre-training (sparse encoder, LAMB, checkpoints, resume, TensorBoard, torchrun)"


def add_arguments(p):
    from spark_sparse.train.config import add_arguments as add
    add(p)


def run(args) -> int:
    from spark_sparse.train.trainer import pretrain
    return pretrain(args)
