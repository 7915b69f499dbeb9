"""The prototype memory bank of DMW-LA: state, warm-up sampling, k-means start, read, update.

The bank keeps, for each of ``num_k`` categories, a block of ``pool_size`` remembered feature
vectors (the "similarity memory prior") and a prototype per category.  Everything it knows lives
in buffers, so it is saved in ``state_dict`` and follows ``.to()``.  It changes only through
`PrototypeMemory.warmup_write`, `PrototypeMemory.initialise_from_kmeans` and
`PrototypeMemory.update`, which the attention block calls in training mode only, from
`simmpnet.models.dmwla.DMWLA.commit_memory` (after the step's loss proved finite).

Nothing here loops in Python over categories, samples or positions: categories are handled by
sorting positions by category and working on fixed-size chunks of one category each.  After the
warm-up nothing here makes the host wait for the device either: every shape is known from the
input's shape and from host-side mirrors of the counters, so a GPU's launch queue never drains
(`simmpnet.host_syncs` counts what would).
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["PrototypeMemory", "kmeans"]


def _count_per_category(category: torch.Tensor, num_k: int) -> torch.Tensor:
    """``(num_k,)`` number of rows of each category.  Unlike ``bincount`` (whose length depends on
    the largest value) the length is known beforehand, so a GPU does not sync."""
    return torch.zeros(num_k, dtype=torch.long, device=category.device).scatter_add_(
        0, category, torch.ones_like(category)
    )


def _exporting() -> bool:
    """True inside ``torch.jit.trace``, ``torch.onnx.export`` or ``torch.export``: the graph they
    write may be run at other input sizes, so it must not hold sizes computed from this one."""
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting())


@torch.no_grad()
def _kmeans_plus_plus(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding.  Random draws come from a CPU generator, so the seeds do not depend
    on the device the points live on."""
    n = points.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centroids = points[first : first + 1]
    closest = torch.cdist(points, centroids).squeeze(1).square()
    for _ in range(1, k):
        weights = closest.double().cpu()
        if float(weights.sum()) <= 0.0:  # every point coincides with a centroid already
            weights = torch.ones(n, dtype=torch.float64)
        nxt = int(torch.multinomial(weights, 1, generator=generator))
        centroids = torch.cat([centroids, points[nxt : nxt + 1]])
        closest = torch.minimum(closest, torch.cdist(points, points[nxt : nxt + 1]).squeeze(1).square())
    return centroids


@torch.no_grad()
def kmeans(
    points: torch.Tensor,
    k: int,
    max_iter: int = 100,
    n_init: int = 3,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding, in torch on the points' device.

    Args:
        points: ``(n, d)`` float tensor.
        k: number of clusters, ``1 <= k <= n``.
        max_iter: Lloyd iterations per restart (stops early once assignments are stable).
        n_init: restarts; the one with the lowest inertia wins.
        seed: seed of the CPU generator used for seeding, for repeatable results.

    Returns:
        ``(centroids (k, d), labels (n,))``.  An empty cluster is re-seeded with the point
        farthest from its centroid, so every cluster keeps at least one member whenever the
        points hold at least ``k`` distinct values.
    """
    if points.ndim != 2:
        raise ValueError(f"kmeans expects points of shape (n, d), got {tuple(points.shape)}")
    n = points.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"kmeans needs 1 <= k <= n, got k={k}, n={n}")
    points = points.float()
    generator = torch.Generator().manual_seed(seed)
    best: tuple[float, torch.Tensor, torch.Tensor] | None = None
    for _ in range(n_init):
        centroids = _kmeans_plus_plus(points, k, generator)
        labels = torch.full((n,), -1, dtype=torch.long, device=points.device)
        for _ in range(max_iter):
            dist = torch.cdist(points, centroids)
            new_labels = dist.argmin(1)
            counts = torch.bincount(new_labels, minlength=k)
            empty = (counts == 0).nonzero().squeeze(1)
            if empty.numel():
                far = dist.gather(1, new_labels[:, None]).squeeze(1).topk(empty.numel()).indices
                new_labels[far] = empty
                counts = torch.bincount(new_labels, minlength=k)
            sums = torch.zeros_like(centroids).index_add_(0, new_labels, points)
            centroids = sums / counts.clamp(min=1)[:, None].to(points.dtype)
            if torch.equal(new_labels, labels):
                break
            labels = new_labels
        inertia = float((points - centroids[labels]).square().sum())
        if best is None or inertia < best[0]:
            best = (inertia, centroids, labels)
    assert best is not None
    return best[1], best[2]


class PrototypeMemory(nn.Module):
    """Category-structured memory bank with prototypes (docs/method.md).

    Args:
        feature_dim: width ``d`` of the stored vectors.
        num_k: number of categories ``n_k``.
        pool_size: slots per category ``P``.
        warmup_iters: training forwards ``T_w`` of warm-up before the k-means start.
        memory_momentum: ``m``; a rewritten slot becomes ``(1 - m) old + m new``.
        update_count: ``K``, slots rewritten per category and update (W-LD changes it).
        kmeans_iters: Lloyd iterations of the k-means start.
        kmeans_restarts: restarts of the k-means start.
        seed: seed of the k-means start.

    Buffers:
        ``bank`` ``(d, num_k * P)``: block ``c`` is columns ``c*P .. (c+1)*P - 1``.
        ``prototypes`` ``(d, num_k)``; ``warmup_counter`` (training forwards seen during
        warm-up); ``warmup_done`` (1 once the warm-up has ended: the k-means start has run and
        the block reads its memory); ``update_count`` (``K``).

    The phase is ``warmup_done``, state saved with the weights: a network built with any
    ``warmup_iters`` that loads a state dict computes the function of the network that wrote
    it, and a resumed or extended run never runs the k-means start again.  ``warmup_iters``
    only says when a block still in warm-up leaves it.  A state dict without ``warmup_done``
    (written before simmpnet recorded the phase) is read by the rule that applied then: the
    warm-up has ended when its ``warmup_counter`` has reached the loading block's
    ``warmup_iters``.
    """

    bank: torch.Tensor
    prototypes: torch.Tensor
    warmup_counter: torch.Tensor
    warmup_done: torch.Tensor
    update_count: torch.Tensor

    def __init__(
        self,
        feature_dim: int,
        num_k: int,
        pool_size: int = 100,
        warmup_iters: int = 2000,
        memory_momentum: float = 0.3,
        update_count: int = 50,
        kmeans_iters: int = 100,
        kmeans_restarts: int = 3,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if feature_dim < 1 or num_k < 1 or pool_size < 1:
            raise ValueError(
                f"feature_dim, num_k and pool_size must be positive, got {feature_dim}, {num_k}, {pool_size}"
            )
        if warmup_iters < 0:
            raise ValueError(f"warmup_iters must be >= 0, got {warmup_iters}")
        if not 0.0 <= memory_momentum <= 1.0:
            raise ValueError(f"memory_momentum must lie in [0, 1], got {memory_momentum}")
        self.feature_dim = feature_dim
        self.num_k = num_k
        self.pool_size = pool_size
        self._warmup_iters = warmup_iters
        self.memory_momentum = memory_momentum
        self.kmeans_iters = kmeans_iters
        self.kmeans_restarts = kmeans_restarts
        self.seed = seed
        self.register_buffer("bank", torch.rand(feature_dim, num_k * pool_size))
        self.register_buffer("prototypes", torch.rand(feature_dim, num_k))
        self.register_buffer("warmup_counter", torch.zeros((), dtype=torch.long))
        # No warm-up at all: the block reads its (random) bank from the first forward.
        self.register_buffer("warmup_done", torch.tensor(int(warmup_iters == 0), dtype=torch.long))
        self.register_buffer("update_count", torch.tensor(update_count, dtype=torch.long))
        self._sync_warmup()
        self._sync_update_count()

    def extra_repr(self) -> str:
        return (
            f"feature_dim={self.feature_dim}, num_k={self.num_k}, pool_size={self.pool_size}, "
            f"warmup_iters={self.warmup_iters}, memory_momentum={self.memory_momentum}"
        )

    @property
    def in_warmup(self) -> bool:
        """True until the k-means start has run (after ``warmup_iters`` training forwards, or
        through `initialise_from_kmeans`); read from ``warmup_done``, saved state."""
        # A Python mirror of the phase buffer, kept in step by every method that changes it and
        # by load_state_dict: torch.compile branches on it without a graph break.
        return not self._done

    @property
    def warmup_iters(self) -> int:
        """``T_w``: training forwards of warm-up.  Changing it never changes the phase: a block
        past its warm-up stays there, one in warm-up leaves it at its next training forward
        once the counter has reached the new length."""
        return self._warmup_iters

    @warmup_iters.setter
    def warmup_iters(self, value: int) -> None:
        if int(value) < 0:
            raise ValueError(f"warmup_iters must be >= 0, got {value}")
        self._warmup_iters = int(value)

    def _sync_warmup(self) -> None:
        self._counter = int(self.warmup_counter)
        self._done = bool(self.warmup_done)

    def _sync_update_count(self) -> None:
        # The update's shapes depend on K: a host mirror of the buffer keeps them known.
        self._k = int(self.update_count)

    def set_update_count(self, k: int) -> None:
        """Set ``K`` (the buffer and its host mirror)."""
        self.update_count.fill_(int(k))
        self._k = int(k)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        phase = prefix + "warmup_done"
        if phase not in state_dict and prefix + "warmup_counter" in state_dict:
            # Written before the phase was saved: the rule of that time (class docstring).
            if phase in missing_keys:
                missing_keys.remove(phase)
            with torch.no_grad():
                self.warmup_done.fill_(int(int(self.warmup_counter) >= self._warmup_iters))
        self._sync_warmup()
        self._sync_update_count()

    @property
    def total_slots(self) -> int:
        return self.num_k * self.pool_size

    # ------------------------------------------------------------------ warm-up
    @torch.no_grad()
    def warmup_write(self, features: torch.Tensor) -> None:
        """One warm-up step: write random feature columns into random slots.

        Args:
            features: ``(B, d, N)`` features of one batch (the ``phi`` projection).

        The share of sampled columns that is written grows linearly to one half at the last
        warm-up step.  When the counter reaches ``warmup_iters`` the k-means start runs.
        """
        if not self.in_warmup:
            raise RuntimeError("warmup_write called after the warm-up has ended")
        b, d, n = features.shape
        device = features.device
        per_image = max(self.total_slots // b, 1)
        positions = torch.randint(n, (b, 1, per_image), device=device).expand(b, d, per_image)
        columns = features.gather(2, positions).transpose(0, 1).reshape(d, b * per_image)
        share = (self._counter + 1) / max(self.warmup_iters, 1) * 0.5
        count = min(max(1, int(share * columns.shape[1])), self.total_slots)
        picked = torch.randint(columns.shape[1], (count,), device=device)
        slots = torch.randperm(self.total_slots, device=device)[:count]
        self.bank[:, slots] = columns[:, picked].to(self.bank.dtype)
        self.warmup_counter += 1
        self._counter += 1
        if self._counter >= self.warmup_iters:
            self.initialise_from_kmeans()

    @torch.no_grad()
    def initialise_from_kmeans(self) -> None:
        """End the warm-up now: cluster the bank's columns into ``num_k`` groups, rebuild the
        bank so that block ``c`` holds ``P`` members of cluster ``c`` (members repeat when the
        cluster is smaller than ``P``) and set the prototypes to the unit-norm centroids.
        Runs in fp32, also under autocast."""
        with torch.autocast(self.bank.device.type, enabled=False):
            self._initialise_from_kmeans()

    def _initialise_from_kmeans(self) -> None:
        points = self.bank.t().float()
        centroids, labels = kmeans(
            points, self.num_k, max_iter=self.kmeans_iters, n_init=self.kmeans_restarts, seed=self.seed
        )
        counts = torch.bincount(labels, minlength=self.num_k)
        order = torch.argsort(labels, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(self.pool_size, device=points.device)
        member = starts[:, None] + slot[None, :] % counts.clamp(min=1)[:, None]
        rebuilt = points[order[member.clamp(max=points.shape[0] - 1)]]  # (num_k, P, d)
        # A cluster can only be empty when the bank holds fewer than num_k distinct vectors;
        # its block then holds copies of its centroid.
        rebuilt = torch.where((counts == 0)[:, None, None], centroids[:, None, :], rebuilt)
        self.bank.copy_(rebuilt.reshape(self.total_slots, -1).t())
        self.prototypes.copy_(F.normalize(centroids, dim=1).t())
        self._counter = max(self._counter, self.warmup_iters)
        self.warmup_counter.fill_(self._counter)
        self.warmup_done.fill_(1)
        self._done = True
        sizes = counts.tolist()
        logger.info("memory bank structured by k-means: cluster sizes %s", sizes)

    # --------------------------------------------------------------------- read
    def assign(self, queries: torch.Tensor) -> torch.Tensor:
        """Category of each query: ``argmax_c cos(query, prototype_c)``.  ``(R, d) -> (R,)``."""
        with torch.no_grad(), torch.autocast(queries.device.type, enabled=False):
            # at least fp32 (fp64 stays fp64), bf16 queries of the bf16 island included: near-ties
            # between two prototypes are common, and this choice is what must not change
            dtype = torch.promote_types(queries.dtype, torch.float32)
            protos = F.normalize(self.prototypes.to(dtype), dim=0)
            return (queries.detach().to(dtype) @ protos).argmax(1)

    def read(self, queries: torch.Tensor, dense: bool | None = None) -> torch.Tensor:
        """Memory read: each query attends (softmax of dot products, no scale) over the ``P``
        slots of its own category.

        Args:
            queries: ``(R, d)`` (the ``theta`` projection of every position of the batch).
            dense: use `read_dense` instead of the chunked read.  ``None`` (default):
                dense while exporting (``torch.jit.trace``, ``torch.onnx.export``,
                ``torch.export``), chunked otherwise, ``torch.compile`` included (the chunked
                read's shapes follow from the input's shape alone).

        Returns:
            ``(R, d)``: ``softmax(q . M_c) M_c^T`` row by row, in the queries' dtype;
            differentiable w.r.t. ``queries``.

        The category is chosen and the read computed in at least fp32 (fp64 stays fp64):
        half-precision queries (DMW-LA's bf16 island) are bf16 values already, so only the
        result is rounded, once.  The slots of a category are alike (one k-means cluster) and
        their logits reach 1e5 in trained networks: the bank rounded to bf16 would reorder them.
        """
        if dense is None:
            dense = _exporting()
        if dense:
            return self.read_dense(queries)
        rows, d = queries.shape
        category = self.assign(queries)
        counts = _count_per_category(category, self.num_k)
        # Positions are sorted by category and cut into chunks of `chunk` rows that all belong
        # to one category; at most num_k chunks are partly padding.  Chunks of a quarter of an
        # even share keep the padding below a quarter of the rows.  The number of chunks is
        # their upper bound for `rows` rows (each category pads fewer than `chunk` rows), not
        # the count of this batch: reading that count would make a GPU wait.  Chunks past the
        # used ones hold zeros and are never read back.
        chunk = max(8, math.ceil(rows / (4 * self.num_k)))
        n_chunks = (rows + self.num_k * (chunk - 1)) // chunk
        chunks_per_cat = torch.div(counts + chunk - 1, chunk, rounding_mode="floor")
        first_chunk = torch.cumsum(chunks_per_cat, 0) - chunks_per_cat
        first_row = torch.cumsum(counts, 0) - counts
        order = torch.argsort(category, stable=True)
        sorted_cat = category[order]
        rank = torch.arange(rows, device=queries.device) - first_row[sorted_cat]
        padded_row = (first_chunk[sorted_cat] + torch.div(rank, chunk, rounding_mode="floor")) * chunk + rank % chunk
        destination = torch.empty_like(padded_row)
        destination[order] = padded_row

        dtype = torch.promote_types(queries.dtype, torch.float32)
        padded = queries.new_zeros(n_chunks * chunk, d, dtype=dtype).index_copy(0, destination, queries.to(dtype))
        chunk_cat = torch.searchsorted(
            torch.cumsum(chunks_per_cat, 0), torch.arange(n_chunks, device=queries.device), right=True
        ).clamp(max=self.num_k - 1)
        blocks = self.bank.view(d, self.num_k, self.pool_size).permute(1, 2, 0)  # (num_k, P, d)
        padded = padded.view(n_chunks, chunk, d)
        slots = blocks[chunk_cat].to(dtype)  # (n_chunks, P, d)
        read = torch.softmax(padded @ slots.transpose(1, 2), dim=-1) @ slots
        return read.reshape(n_chunks * chunk, d)[destination].to(queries.dtype)

    def read_dense(self, queries: torch.Tensor) -> torch.Tensor:
        """The same read as `read` with no data-dependent indexing, for exporters.

        Scores against all ``num_k * P`` slots, a softmax within each category's block, the
        blocks of the other categories zeroed by a one-hot mask, then one matmul with the bank.
        It costs ``num_k`` times the multiply-adds of the chunked read (no bincount, no
        data-dependent chunk count), and holds an ``(R, num_k * P)`` weight matrix.
        """
        rows, d = queries.shape
        category = self.assign(queries)
        # At least fp32, as `read`: the logits reach 1e5.
        dtype = torch.promote_types(queries.dtype, torch.float32)
        bank = self.bank.to(dtype)  # (d, num_k * P)
        scores = (queries.to(dtype) @ bank).view(rows, self.num_k, self.pool_size)
        categories = torch.arange(self.num_k, device=queries.device)
        mask = (category[:, None] == categories).to(dtype).unsqueeze(-1)  # (R, num_k, 1)
        weights = torch.softmax(scores, dim=-1) * mask
        return (weights.view(rows, self.num_k * self.pool_size) @ bank.t()).to(queries.dtype)

    # ------------------------------------------------------------------- update
    @torch.no_grad()
    def update(self, keys: torch.Tensor, accept: torch.Tensor | None = None) -> None:
        """One memory update from the momentum keys of a batch (docs/method.md, "The memory update").

        Args:
            keys: ``(R, d)`` keys ``phi_k(x)`` of every position of the batch (of every rank,
                in distributed training).
            accept: a boolean scalar tensor; when it is false the bank and the prototypes stay
                as they are.  The decision stays on the device (e.g. "the keys are finite"),
                so the host does not wait for it.

        Per category ``c``: the ``K`` slots with the lowest score (sum over rows of the
        softmax of ``M_c`` over its slots) are blended with the ``K`` positions of ``c`` with
        the highest score (sum over rows of the softmax of the keys over the positions of
        ``c``), lowest slot with best position.  A category with ``n < K`` positions first
        replicates them to ``K`` candidates, as the authors do: each position ``K // n`` times,
        one copy more for the ``K % n`` best (the authors draw those at random); the
        candidates are then scored among themselves (the softmax runs over the ``K`` copies)
        and paired in that order, so the copies of the best position fill the first weakest
        slots, those of the next one the following slots, and so on.  A category with no
        position is left unchanged.  Then the prototypes become the block means.  Runs in
        fp32 (fp64 in a float64 model), also under autocast.
        """
        with torch.autocast(keys.device.type, enabled=False):
            self._update(keys.to(torch.promote_types(keys.dtype, torch.float32)), accept)

    def _update(self, keys: torch.Tensor, accept: torch.Tensor | None) -> None:
        rows, d = keys.shape
        k = min(self._k, self.pool_size)
        if rows == 0 or k < 1:
            return
        category = (keys @ self.prototypes.to(keys.dtype)).argmax(1)
        counts = _count_per_category(category, self.num_k)

        blocks = self.bank.view(d, self.num_k, self.pool_size)
        slot_score = torch.softmax(blocks, dim=2).sum(0)  # (num_k, P)
        weakest = slot_score.topk(k, dim=1, largest=False).indices  # (num_k, K)

        # Softmax over the positions of each category, separately for every row of the keys;
        # a position counts `copies` times in the denominator.
        index = category[:, None].expand(rows, d)
        seg_max = keys.new_full((self.num_k, d), float("-inf")).scatter_reduce(0, index, keys, "amax")
        expo = torch.exp(keys - seg_max[category])
        positions = torch.arange(rows, device=keys.device)

        def ranked_by_score(copies: torch.Tensor) -> torch.Tensor:
            """``(num_k, min(K, R))`` positions of each category, best first (-1: none)."""
            seg_sum = keys.new_zeros(self.num_k, d).index_add_(0, category, expo * copies[:, None])
            score = (expo / seg_sum[category]).sum(1)  # (R,)
            per_category = keys.new_full((self.num_k, rows), float("-inf"))
            per_category[category, positions] = score
            top = per_category.topk(min(k, rows), dim=1)
            return torch.where(torch.isfinite(top.values), top.indices, -1)

        # Copies per position: 1 where a category has at least K positions; else K // n, and
        # one more for the K % n best by the score of the single positions.
        ones = torch.ones(rows, dtype=keys.dtype, device=keys.device)
        ranked = ranked_by_score(ones)
        n = counts.clamp(min=1)[:, None]
        rank = torch.arange(ranked.shape[1], device=keys.device)[None, :]
        short = counts[:, None] < k
        per_rank = torch.where(short, k // n + (rank < k % n).long(), 1)
        copies = torch.cat([ones, ones[:1]]).index_put_(
            (torch.where(ranked >= 0, ranked, rows).reshape(-1),), per_rank.reshape(-1).to(keys.dtype)
        )[:rows]
        ranked = ranked_by_score(copies)
        # Slot j of the K weakest takes the candidate at rank j of the replicated, sorted list.
        ranked_copies = torch.where(ranked >= 0, copies[ranked.clamp(min=0)], 0).cumsum(1)
        slot = torch.arange(k, device=keys.device, dtype=keys.dtype).expand(self.num_k, k).contiguous()
        pick = torch.searchsorted(ranked_copies.contiguous(), slot, right=True).clamp(max=ranked.shape[1] - 1)
        best = ranked.gather(1, pick).clamp(min=0)  # (num_k, K); empty categories are masked below

        slots = (torch.arange(self.num_k, device=keys.device)[:, None] * self.pool_size + weakest).reshape(-1)
        old = self.bank[:, slots]
        new = (1.0 - self.memory_momentum) * old + self.memory_momentum * keys[best.reshape(-1)].t()
        filled = (counts > 0).repeat_interleave(k)
        if accept is not None:
            filled = filled & accept
        self.bank[:, slots] = torch.where(filled[None, :], new, old)
        means = blocks.mean(2)
        self.prototypes.copy_(means if accept is None else torch.where(accept, means, self.prototypes))
