"""Near-duplicate removal that keeps working at a hundred thousand examples and more.

Two examples are near copies when their prompts are near copies *and* each of their answers
is (cosine similarity of all-MiniLM-L6-v2 embeddings at or above the threshold); examples
whose prompts alone are near copies share a `group`, so the split keeps them on one side.
Comparing prompt and answer separately (rather than one embedding of both) keeps a long
shared prompt from hiding two different answers, and lets a text shared by several examples
(the same question in SFT and KTO) be embedded once.

Examples arrive in chunks, in order; the first of a set of near copies is kept. Each chunk
is compared with every example kept before it through an index of their prompt vectors,
exact (faiss' flat index) up to `exact_limit` kept examples and an HNSW graph above (exact
search grows with the square of the data: about a minute at 100k examples on two cores,
an hour at a million). Candidates the index finds are then checked exactly.
"""

import numpy as np

HNSW_NEIGHBOURS = 16     # links per node of the graph (faiss' M)
HNSW_BUILD_DEPTH = 40    # candidates considered when a node joins (efConstruction)
HNSW_SEARCH_DEPTH = 64   # candidates considered per search (efSearch)


class _Rows:
    """A growing float16 matrix, in fixed blocks (no copy of everything when it grows)."""

    BLOCK = 65536

    def __init__(self):
        self.blocks: list[np.ndarray] = []
        self.size = 0

    def extend(self, rows: np.ndarray) -> None:
        """Append `rows` (as float16), adding a block whenever the last one is full."""
        for row in rows.astype(np.float16):
            if self.size % self.BLOCK == 0:
                self.blocks.append(np.empty((self.BLOCK, rows.shape[1]), dtype=np.float16))
            self.blocks[-1][self.size % self.BLOCK] = row
            self.size += 1

    def row(self, i: int) -> np.ndarray:
        """Row `i`, as float32."""
        return self.blocks[i // self.BLOCK][i % self.BLOCK].astype(np.float32)

    def all(self) -> np.ndarray:
        """Every row, a block at a time (as float32, for an index)."""
        for n, block in enumerate(self.blocks):
            yield block[:min(self.BLOCK, self.size - n * self.BLOCK)].astype(np.float32)


class NearDuplicates:
    """Which examples of a stream to keep, and their groups."""

    def __init__(self, threshold: float, answers: int, exact_limit: int = 50_000,
                 neighbours: int = 16):
        self.threshold, self.exact_limit, self.neighbours = threshold, exact_limit, neighbours
        self.prompts, self.answers = _Rows(), [_Rows() for _ in range(answers)]
        self.groups: list[str] = []
        self.index = None
        self.approximate = False

    def add(self, prompts: np.ndarray, answers: list[np.ndarray], conversations: list[str]
            ) -> list[str | None]:
        """For each new example (normalised vectors of its prompt and of each answer, and its
        conversation): None for a near copy of one kept earlier, else its group."""
        prompts = prompts.astype(np.float16).astype(np.float32)  # as the index keeps them
        answers = [a.astype(np.float16).astype(np.float32) for a in answers]
        found = self._search(prompts)
        within = prompts @ prompts.T      # the chunk against itself
        base = self.prompts.size          # ids from `base` on: kept earlier in this chunk
        kept: list[int] = []              # chunk positions kept, and their groups
        groups: list[str] = []
        out: list[str | None] = []
        for i in range(len(prompts)):
            near = np.nonzero(within[i, kept] >= self.threshold)[0] if kept else []
            candidates = found[i] + [(float(within[i, kept[n]]), base + int(n)) for n in near]
            group = conversations[i]
            if candidates:
                ids = [j for _, j in sorted(candidates, reverse=True)]
                if self._copies(i, ids, answers, kept):
                    out.append(None)
                    continue
                group = self.groups[ids[0]] if ids[0] < base else groups[ids[0] - base]
            kept.append(i)
            groups.append(group)
            out.append(group)
        if kept:
            self._remember(prompts[kept], [a[kept] for a in answers], groups)
        return out

    def _copies(self, i: int, ids: list[int], answers: list[np.ndarray], kept: list[int]) -> bool:
        """Whether each answer of example `i` is a near copy of the same answer of one of
        the candidates `ids` (kept before this chunk, or in it)."""
        base = self.prompts.size
        close = np.ones(len(ids), dtype=bool)
        for n, a in enumerate(answers):
            vectors = np.stack([self.answers[n].row(j) if j < base else a[kept[j - base]]
                                for j in ids])
            close &= vectors @ a[i] >= self.threshold
        return bool(close.any())

    def _remember(self, prompts: np.ndarray, answers: list[np.ndarray], groups: list[str]):
        """Kept examples join the index, before the next chunk is compared."""
        import faiss
        self.prompts.extend(prompts)
        for rows, a in zip(self.answers, answers):
            rows.extend(a)
        self.groups += groups
        if self.index is None:
            self.index = faiss.IndexFlatIP(prompts.shape[1])
        if not self.approximate and self.prompts.size > self.exact_limit:
            self._to_graph()
        else:
            self.index.add(np.ascontiguousarray(prompts, dtype=np.float32))

    def _search(self, prompts: np.ndarray) -> list[list[tuple[float, int]]]:
        """Per new prompt: (similarity, kept id) of the kept prompts at or above the
        threshold. A row whose k-th neighbour still passes is searched again with more."""
        if self.index is None or self.index.ntotal == 0:
            return [[] for _ in prompts]
        query = np.ascontiguousarray(prompts, dtype=np.float32)
        out: list[list[tuple[float, int]]] = [[] for _ in prompts]
        todo, k = list(range(len(prompts))), self.neighbours
        while todo:
            k = min(k, self.index.ntotal)
            sims, ids = self.index.search(query[todo], k)
            again = []
            for row, i in enumerate(todo):
                hits = [(float(s), int(j)) for s, j in zip(sims[row], ids[row])
                        if j >= 0 and s >= self.threshold]
                if len(hits) == k and k < self.index.ntotal:
                    again.append(i)
                else:
                    out[i] = hits
            todo, k = again, k * 4
        return out

    def _to_graph(self) -> None:
        """Swap the exact index for an HNSW graph holding the same prompts."""
        import faiss
        dim = self.index.d
        # M 16, efConstruction 40, efSearch 64: on the 98,583 KTO examples of a 100,000-rating
        # home (bench/storage.py) the pass took 42 s against 63 s with 32 / 80 / 128, and
        # exact search's groups, 74,586, against 74,587 (the same examples kept).
        graph = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction, graph.hnsw.efSearch = HNSW_BUILD_DEPTH, HNSW_SEARCH_DEPTH
        for block in self.prompts.all():
            graph.add(np.ascontiguousarray(block))
        self.index, self.approximate = graph, True
