"""Classification and retrieval metrics.

- top-k accuracy: the share of samples whose label is among the k highest logits (k is capped at the
  number of classes; ties are broken by class index, lowest first).
- recall@1 (feature matching): the validation set is split into a gallery and queries,
  deterministically: within each class, in dataset order, the first ceil(n/2) samples are the gallery
  and the rest are queries. Each query embedding is matched to the gallery embedding of highest cosine
  similarity; recall@1 is the share of queries whose match has the query's label.
"""
from collections import OrderedDict

import numpy as np


def topk_accuracy(logits, labels, k):
    logits, labels = np.asarray(logits), np.asarray(labels).reshape(-1)
    k = min(int(k), logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean()) if len(labels) else 0.0


def gallery_mask(labels):
    """Boolean mask: True for gallery samples, False for queries (first half of each class is gallery)."""
    labels = np.asarray(labels).reshape(-1)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        mask[idx[:(len(idx) + 1) // 2]] = True
    return mask


def l2_normalize(x, eps=1e-12):
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def recall_at_1(embeddings, labels, mask=None, chunk=1024, gallery_embeddings=None):
    """(recall@1, number of queries, gallery size) of cosine nearest-neighbour matching.

    `gallery_embeddings` (same rows as `embeddings`, e.g. the teacher's) matches each query of one model
    against the gallery computed by another: cross-model retrieval, which works only when both embed
    into the same space (a student distilled with the teacher's frozen head and a projection)."""
    labels = np.asarray(labels).reshape(-1)
    mask = gallery_mask(labels) if mask is None else np.asarray(mask, dtype=bool)
    emb = l2_normalize(embeddings)
    g_emb = emb if gallery_embeddings is None else l2_normalize(gallery_embeddings)
    if g_emb.shape != emb.shape:
        raise ValueError(f"query embeddings {emb.shape} and gallery embeddings {g_emb.shape} differ in shape")
    gallery, g_labels = g_emb[mask], labels[mask]
    queries, q_labels = emb[~mask], labels[~mask]
    if len(queries) == 0 or len(gallery) == 0:
        return 0.0, len(queries), len(gallery)
    hits = 0
    for start in range(0, len(queries), chunk):
        sims = queries[start:start + chunk] @ gallery.T
        nearest = np.argmax(sims, axis=1)
        hits += int((g_labels[nearest] == q_labels[start:start + chunk]).sum())
    return hits / len(queries), len(queries), len(gallery)


def classification_metrics(logits, embeddings, labels):
    top1 = topk_accuracy(logits, labels, 1)
    top5 = topk_accuracy(logits, labels, 5)
    recall, queries, gallery = recall_at_1(embeddings, labels)
    return OrderedDict(top1=top1, top5=top5, recall_at_1=recall, images=int(len(labels)), queries=int(queries),
                       gallery=int(gallery))


def eval_line(metrics):
    return (f"[EVAL] #Images: {metrics['images']} top1: {metrics['top1']:.4f} top5: {metrics['top5']:.4f} "
            f"recall@1: {metrics['recall_at_1']:.4f} (feature matching, cosine, {metrics['queries']} queries "
            f"vs a gallery of {metrics['gallery']})")
