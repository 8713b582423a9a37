"""slim: knowledge distillation for PaddlePaddle models (PaddleSeg, PaddleDetection, paddle.vision)."""
import os

__version__ = "0.1.0"

# Importing paddle sets OMP_NUM_THREADS=1 when it is unset; remember what the user asked for, so that
# single-process runs can use every core unless told otherwise (slim.engine.env.use_all_cores).
USER_OMP_NUM_THREADS = os.environ.get("OMP_NUM_THREADS")
