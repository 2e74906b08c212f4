"""An id-only table model: it holds the ids of the current query, never the rows.

Rows are built on demand from ``Pack.get_many`` in blocks of ``BLOCK`` ids and kept in
a small LRU cache, so only what the view paints is ever read: a million-entry pack
costs one ``all_ids_array`` (an int64 array) and a few blocks. Change records from the
hub invalidate exactly the cached blocks holding the touched ids; changes that can
move rows in or out of the current query (status, add, delete, undo) reload the ids.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np
from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt, Signal

from engine.store.examples import is_example

log = logging.getLogger(__name__)

BLOCK = 128
MAX_BLOCKS = 48
SYNC_LIMIT = 20_000  # packs up to this many ids load their id list on the GUI thread (~20 ms)
FIRST_PAGE = 4 * BLOCK  # a big pack shows this many rows at once while its ids load
COLUMNS = ["id", "score", "title", "text", "source", "status", "updated"]  # score: search results only
SORTABLE = {"id", "updated"}
TEXT_PREVIEW = 240
# Change kinds (the store's names, plus a few synonyms so that a rename stays harmless).
EDIT_KINDS = {"edit"}
STATUS_KINDS = {"status", "set_status", "disable", "enable"}
DELETE_KINDS = {"delete"}
ADD_KINDS = {"add", "add_many", "import"}


def _disabled_brush():
    """Greyed text for disabled entries, from the palette (follows light/dark themes)."""
    from PySide6.QtGui import QPalette
    from PySide6.QtWidgets import QApplication

    return QApplication.palette().brush(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text)


def _disabled_font():
    """Disabled entries are also struck through: grey alone is faint on some palettes."""
    from PySide6.QtGui import QFont

    f = QFont()
    f.setStrikeOut(True)
    return f


_DISPLAY = int(Qt.ItemDataRole.DisplayRole)
_TOOLTIP = int(Qt.ItemDataRole.ToolTipRole)
_FOREGROUND = int(Qt.ItemDataRole.ForegroundRole)
_USER = int(Qt.ItemDataRole.UserRole)
_ALIGN = int(Qt.ItemDataRole.TextAlignmentRole)
_FONT = int(Qt.ItemDataRole.FontRole)
_ROLES = frozenset((_DISPLAY, _TOOLTIP, _FOREGROUND, _USER, _ALIGN, _FONT))
_RIGHT = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
_ID, _SCORE, _TEXT = COLUMNS.index("id"), COLUMNS.index("score"), COLUMNS.index("text")
_TITLE = COLUMNS.index("title")
EXAMPLE_BADGE = "[example]"
EXAMPLE_TIP = "A worked example (question → answer), retrieved and read like the facts"


def _cells(e) -> tuple:
    """The display strings of one entry, by column (made once per fetched row)."""
    t = e.text.replace("\n", " ")
    if len(t) > TEXT_PREVIEW:
        t = t[: TEXT_PREVIEW - 1] + "…"
    updated = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.updated)) if e.updated else ""
    # a worked example (question → answer) is marked where the eye starts reading a row
    title = f"{EXAMPLE_BADGE} {e.title}".rstrip() if is_example(e) else e.title
    by_name = {"id": str(e.id), "score": None, "title": title, "text": t, "source": e.source,
               "status": e.status, "updated": updated}
    return tuple(by_name[c] for c in COLUMNS)


def _size_hint(pack) -> int:
    """An upper bound of the pack's entries in O(1): its largest id."""
    try:
        return int(pack.conn.execute("SELECT max(id) FROM entries").fetchone()[0] or 0)
    except Exception:  # an old or foreign schema: treat it as big, load in the background
        return SYNC_LIMIT + 1


def query_ids(pack, status: str | None, tag: str | None, sort_key: str) -> np.ndarray:
    """The ids of a query, in the table's order (runs on any thread, with that thread's Pack)."""
    if sort_key.endswith("updated"):
        ids = _ids_by_updated(pack, status, tag)
    elif tag is None:
        ids = _ids_fast(pack, status)
    else:
        ids = np.asarray(pack.all_ids_array(status, tag), dtype=np.int64)
    if sort_key in ("-id", "-updated"):
        ids = ids[::-1].copy()
    return ids


def _ids_fast(pack, status: str | None, chunk: int = 100_000) -> np.ndarray:
    """``pack.all_ids_array(status)`` in about half the time at a million entries: SQLite
    joins each chunk of ids into one string (C code, the GIL released) and numpy parses
    it, instead of one Python tuple per row. Falls back to the Pack API on any surprise."""
    where = "status != 'deleted'" + (" AND status = ?" if status else "")
    sql = (f"SELECT group_concat(id), max(id), count(*) FROM "
           f"(SELECT id FROM entries WHERE {where} AND id > ? ORDER BY id LIMIT ?)")
    try:
        parts, after = [], 0
        while True:
            joined, last, n = pack.conn.execute(sql, ([status] if status else []) + [after, chunk]).fetchone()
            if not n:
                break
            part = np.fromstring(joined, dtype=np.int64, sep=",")
            if len(part) != n:
                raise ValueError("id list did not parse")
            parts.append(part)
            after = last
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    except Exception as exc:  # another schema, another SQLite: the engine's way
        log.debug("fast id load failed (%s); using Pack.all_ids_array", exc)
        return np.asarray(pack.all_ids_array(status), dtype=np.int64)


def _ids_by_updated(pack, status: str | None, tag: str | None) -> np.ndarray:
    """Ids ordered by last update (then id): one SELECT over the (updated, id) index, no rows."""
    where, params = ["status != 'deleted'"], []
    if status:
        where.append("status = ?")
        params.append(status)
    sql = f"SELECT id FROM entries WHERE {' AND '.join(where)} ORDER BY updated, id"
    ids = np.fromiter((r[0] for r in pack.conn.execute(sql, params)), dtype=np.int64)
    if tag:
        ids = ids[np.isin(ids, np.asarray(pack.all_ids_array(status, tag), dtype=np.int64))]
    return ids


class EntryTableModel(QAbstractTableModel):
    """Columns id, score, title, text, source, status, updated. The column set never changes
    (so header state can be saved); the view hides "score" unless search results are shown."""

    ids_loaded = Signal(int)  # number of rows now shown

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.pack = None
        self._ids = np.zeros(0, dtype=np.int64)
        self._scores: np.ndarray | None = None
        self._cache: OrderedDict[int, dict[int, Any]] = OrderedDict()
        self.status: str | None = None  # None = active and disabled
        self.tag: str | None = None
        self.sort_key = "id"  # "id" | "-id" | "updated" | "-updated"
        self.result_sort = "score"  # order of search results: "score" | "id" | "-id"
        self.rows_fetched = 0  # rows built from the pack so far (for tests and the status bar)
        self.fetch_calls = 0
        self.last_load_s = 0.0  # seconds until the whole id list was there
        self.first_rows_s = 0.0  # seconds until the first rows could be shown
        #: ``loader(fn, on_done)`` runs ``fn(pack)`` on a background read connection and
        #: calls ``on_done(result)`` on the GUI thread (app.reads.ReadService); None = load here.
        self.loader = None
        self.loading = False
        self._load_gen = 0

    # ------------------------------------------------------------------ queries
    @property
    def searching(self) -> bool:
        return self._scores is not None

    def columns(self) -> list[str]:
        return COLUMNS

    def ids(self) -> np.ndarray:
        return self._ids

    def id_at(self, row: int) -> int:
        return int(self._ids[row])

    def row_of(self, entry_id: int) -> int:
        hits = np.flatnonzero(self._ids == entry_id)
        return int(hits[0]) if hits.size else -1

    def score_at(self, row: int) -> float | None:
        return None if self._scores is None else float(self._scores[row])

    def entry_at(self, row: int):
        return self._entry(row)

    # ------------------------------------------------------------------ loading
    def set_pack(self, pack) -> None:
        """Show ``pack`` (a read-only Pack, or None) with the current filter."""
        self.pack = pack
        self._scores = None
        self.reload()

    def set_filter(self, status: str | None = None, tag: str | None = None) -> None:
        self.status = status if status in ("active", "disabled") else None
        self.tag = tag or None
        if not self.searching:
            self.reload()

    def set_sort(self, key: str) -> None:
        if self.searching:
            self.result_sort = key if key in ("id", "-id") else "score"
            self._sort_results()
        elif key != "score":
            self.sort_key = key
            self.reload()

    def effective_sort(self) -> str:
        return self.result_sort if self.searching else self.sort_key

    def set_results(self, ids: Sequence[int], scores: Sequence[float]) -> None:
        """Show ranked search results (best first) with a score column."""
        self._load_gen += 1  # an id list still loading is not wanted any more
        self.loading = False
        self.beginResetModel()
        self._ids = np.asarray(ids, dtype=np.int64)
        self._scores = np.asarray(scores, dtype=np.float64)
        self.result_sort = "score"
        self._cache.clear()
        self.endResetModel()
        self.ids_loaded.emit(len(self._ids))

    def clear_results(self) -> None:
        if self.searching:
            self._scores = None
            self.reload()

    def reload(self) -> None:
        """Reload the id list of the current query (keyset/array reads only, no OFFSET).

        A big pack (more than ``SYNC_LIMIT`` ids) with a background ``loader`` shows its
        first page at once (a keyset read of ``FIRST_PAGE`` ids) and gets the full id
        list from the loader; the rows past the first page are inserted when it arrives,
        so what is on screen does not move. Small packs load their ids right here.
        """
        t0 = time.perf_counter()
        self._load_gen += 1
        gen = self._load_gen
        pack = self.pack
        if pack is None:
            self.loading = False
            self._set_ids(np.zeros(0, dtype=np.int64), t0)
            return
        query = (self.status, self.tag, self.sort_key)
        if self.loader is None or _size_hint(pack) <= SYNC_LIMIT:
            self.loading = False
            self._set_ids(query_ids(pack, *query), t0)
            return
        first = np.zeros(0, dtype=np.int64)
        if self.sort_key == "id":
            first = np.asarray([e.id for e in pack.page(0, FIRST_PAGE, status=self.status, tag=self.tag)], dtype=np.int64)
        self.loading = True
        self._set_ids(first, t0, final=False)
        self.loader(lambda bg_pack: query_ids(bg_pack, *query), lambda ids: self._loaded(gen, ids, t0))

    def _set_ids(self, ids: np.ndarray, t0: float, final: bool = True) -> None:
        self.beginResetModel()
        self._ids = ids
        self._cache.clear()
        self.endResetModel()
        self.first_rows_s = time.perf_counter() - t0
        if final:
            self.last_load_s = self.first_rows_s
            self.ids_loaded.emit(len(self._ids))

    def _loaded(self, gen: int, ids: np.ndarray, t0: float) -> None:
        """The full id list from the background loader (dropped when a newer query was made)."""
        if gen != self._load_gen or self.searching:
            return
        self.loading = False
        n = len(self._ids)
        if n and len(ids) >= n and np.array_equal(ids[:n], self._ids):
            if len(ids) > n:  # the first page stays where it is: append the rest
                self.beginInsertRows(QModelIndex(), n, len(ids) - 1)
                self._ids = ids
                self.endInsertRows()
        else:
            self.beginResetModel()
            self._ids = ids
            self._cache.clear()
            self.endResetModel()
        self.last_load_s = time.perf_counter() - t0
        self.ids_loaded.emit(len(self._ids))

    def _sort_results(self) -> None:
        if self._scores is None:
            return
        if self.result_sort in ("id", "-id"):
            order = np.argsort(self._ids, kind="stable")
            if self.result_sort == "-id":
                order = order[::-1]
        else:
            order = np.argsort(-self._scores, kind="stable")
        self.beginResetModel()
        self._ids = self._ids[order]
        self._scores = self._scores[order]
        self._cache.clear()
        self.endResetModel()

    # ------------------------------------------------------------------ changes
    def apply_change(self, change) -> None:
        """React to a committed Change with the cheapest correct update.

        Edits and (unfiltered) status changes refresh only the cached blocks holding the
        touched ids; deletes drop ids from the array; adds append (ids grow); anything
        else that can move rows in or out of the query (undo/redo, filtered views,
        ordering by update time) reloads the id array — still ids only, never rows.
        """
        kind = str(getattr(change, "kind", ""))
        touched = {int(i) for i in getattr(change, "ids", ())}
        if not touched:
            return
        if self.loading:  # the id list is still coming: ask again for one that includes this change
            self.reload()
            return
        if self.searching:
            if kind in DELETE_KINDS:
                self._drop_ids(touched)
            else:
                self.invalidate_ids(touched)
            return
        filtered = self.status is not None or self.tag is not None
        by_update = self.sort_key.endswith("updated")
        if kind in EDIT_KINDS and not filtered and not by_update:
            self.invalidate_ids(touched)
        elif kind in STATUS_KINDS and not filtered and not by_update:
            self.invalidate_ids(touched)
        elif kind in DELETE_KINDS:
            self._drop_ids(touched)
        elif kind in ADD_KINDS and not filtered and self.sort_key in ("id", "-id"):
            new = np.asarray(sorted(touched.difference(self._ids[-len(touched):].tolist() if len(self._ids) else [])), dtype=np.int64)
            if self.sort_key == "id":
                first = len(self._ids)
                self.beginInsertRows(QModelIndex(), first, first + len(new) - 1)
                self._ids = np.concatenate([self._ids, new])
            else:
                self.beginInsertRows(QModelIndex(), 0, len(new) - 1)
                self._ids = np.concatenate([new[::-1], self._ids])
                self._cache.clear()  # blocks are positional: inserting at the top shifts them
            self.endInsertRows()
            self.ids_loaded.emit(len(self._ids))
        else:
            self.reload()

    def _drop_ids(self, ids: set[int]) -> None:
        keep = ~np.isin(self._ids, np.fromiter(ids, dtype=np.int64))
        if keep.all():
            return
        self.beginResetModel()
        self._ids = self._ids[keep]
        if self._scores is not None:
            self._scores = self._scores[keep]
        self._cache.clear()
        self.endResetModel()
        self.ids_loaded.emit(len(self._ids))

    def invalidate_ids(self, ids: set[int]) -> None:
        if not ids:
            return
        for block in [b for b, rows in self._cache.items() if ids.intersection(rows)]:
            del self._cache[block]
            lo = block * BLOCK
            hi = min(len(self._ids), lo + BLOCK) - 1
            if hi >= lo:
                self.dataChanged.emit(self.index(lo, 0), self.index(hi, self.columnCount() - 1))

    def invalidate_all(self) -> None:
        self._cache.clear()
        if len(self._ids):
            self.dataChanged.emit(self.index(0, 0), self.index(len(self._ids) - 1, self.columnCount() - 1))

    # ------------------------------------------------------------------ rows on demand
    def _entry(self, row: int):
        r = self._row(row)
        return r[0] if r is not None else None

    def _row(self, row: int):
        """(Entry, display strings by column) of ``row``, or None for a vanished entry.

        Rows are read a block at a time and their display strings made once, so that a
        paint (a few thousand ``data()`` calls) is dictionary look-ups only.
        """
        block = row // BLOCK
        rows = self._cache.get(block)
        if rows is None:
            rows = self._fetch_block(block)
        else:
            self._cache.move_to_end(block)
        return rows.get(int(self._ids[row]))

    def _fetch_block(self, block: int) -> dict[int, Any]:
        ids = [int(i) for i in self._ids[block * BLOCK : (block + 1) * BLOCK]]
        try:
            entries = self.pack.get_many(ids) if self.pack is not None else []
        except Exception as exc:  # a vanished/closed pack: show empty rows, log why
            log.warning("reading rows failed: %s", exc)
            entries = []
        rows = {e.id: (e, _cells(e)) for e in entries}
        self.rows_fetched += len(rows)
        self.fetch_calls += 1
        self._cache[block] = rows
        while len(self._cache) > MAX_BLOCKS:
            self._cache.popitem(last=False)
        return rows

    # ------------------------------------------------------------------ Qt model API
    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._ids)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            cols = self.columns()
            return cols[section] if section < len(cols) else None
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        # Hot path: Qt asks 7 roles per painted cell, each a call from C++ into Python;
        # answer the unused ones at once. (Overriding multiData would make it one call per
        # cell, but PySide6 6.12's QModelRoleDataSpan binding crashes the interpreter.)
        if role not in _ROLES:
            return None
        row, col = index.row(), index.column()
        if row < 0 or row >= len(self._ids):
            return None
        if role == _ALIGN:
            return _RIGHT if col <= _SCORE else None
        if col == _SCORE:
            return f"{self._scores[row]:.3f}" if role == _DISPLAY and self._scores is not None else None
        if col == _ID and role == _DISPLAY:
            return str(int(self._ids[row]))
        r = self._row(row)
        if r is None:
            return "(gone)" if role == _DISPLAY and col == _TEXT else None
        e, cells = r
        if role == _DISPLAY:
            return cells[col]
        if role == _FOREGROUND:
            return _disabled_brush() if e.status != "active" else None
        if role == _FONT:
            return _disabled_font() if e.status != "active" else None
        if role == _USER:
            return e
        if role == _TOOLTIP:
            if col == _TITLE and is_example(e):
                return EXAMPLE_TIP
            return e.text if col == _TEXT else None
        return None
    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        name = self.columns()[column] if column < len(self.columns()) else "id"
        desc = order == Qt.SortOrder.DescendingOrder
        if name == "score":
            self.set_sort("score")
            return
        if name not in SORTABLE:
            return
        self.set_sort(("-" if desc else "") + name)
