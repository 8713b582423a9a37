"""slim: knowledge distillation for PaddlePaddle models (PaddleSeg, PaddleDetection, paddle.vision)."""

__version__ = "0.1.0"
