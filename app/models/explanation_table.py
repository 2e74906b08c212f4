"""The retrieved entries of one explanation as a table: rank, pack, entry, score, weight,
leave-one-out effect. Numeric columns also answer ``BAR_ROLE`` with ``(value, scale,
signed)`` so that :class:`app.views.bars.BarDelegate` can draw them as bars."""
from __future__ import annotations

from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt

BAR_ROLE = Qt.ItemDataRole.UserRole + 1
ENTRY_ROLE = Qt.ItemDataRole.UserRole + 2

COLUMNS = ["#", "pack", "entry", "score", "weight", "leave-one-out"]
TIPS = {
    "score": ("Retrieval score: the mean of the prompt's inner products with the entry's key and with the key of "
              "the entry without its last words (its object), plus a bonus for the share of the prompt's "
              "distinctive words the entry's title, text or tags contain (higher = closer)."),
    "weight": "Fusion weight: the share of attention the answer gave this entry (– when the mode cannot tell).",
    "leave-one-out": "Change of the answer's log-probability when this entry is left out: "
                     "positive = the entry supported the answer, negative = it worked against it.",
}
BARS = {"score": ("score", False), "weight": ("weight", False), "leave-one-out": ("loo_delta", True)}


class ExplanationTableModel(QAbstractTableModel):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.rows: list[Any] = []  # RetrievedEntry
        self.changed_ids: set[tuple[str, int]] = set()  # (pack, id) edited since the answer
        self._scale: dict[str, float] = {}

    def set_entries(self, entries: list[Any]) -> None:
        self.beginResetModel()
        self.rows = list(entries)
        self.changed_ids = set()
        self._scale = {}
        for col, (attr, _signed) in BARS.items():
            vals = [abs(float(getattr(r, attr))) for r in self.rows if getattr(r, attr) is not None]
            self._scale[col] = max(vals) if vals else 0.0
        self.endResetModel()

    def mark_changed(self, pack: str, ids: set[int]) -> bool:
        """Flag shown entries of ``pack`` that were edited after the answer; True if any."""
        hit = {(pack, r.id) for r in self.rows if r.pack == pack and r.id in ids}
        new = hit - self.changed_ids
        if new:
            self.changed_ids |= new
            self.dataChanged.emit(self.index(0, 0), self.index(len(self.rows) - 1, len(COLUMNS) - 1))
        return bool(new)

    def entry(self, row: int):
        return self.rows[row]

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:  # noqa: N802
        if orientation != Qt.Orientation.Horizontal or section >= len(COLUMNS):
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        if role == Qt.ItemDataRole.ToolTipRole:
            return TIPS.get(COLUMNS[section])
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or index.row() >= len(self.rows):
            return None
        r = self.rows[index.row()]
        col = COLUMNS[index.column()]
        if role == ENTRY_ROLE:
            return r
        changed = (r.pack, r.id) in self.changed_ids
        if col in BARS:
            attr, signed = BARS[col]
            v = getattr(r, attr)
            if role == BAR_ROLE:
                return None if v is None else (float(v), self._scale.get(col, 0.0), signed)
            if role == Qt.ItemDataRole.DisplayRole:
                return "–" if v is None else (f"{v:+.3f}" if signed else f"{v:.3f}")
            if role == Qt.ItemDataRole.ToolTipRole:
                return TIPS[col]
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            if col == "#":
                return str(index.row() + 1)
            if col == "pack":
                return r.pack
            if col == "entry":
                title = f"{r.title}: " if r.title else ""
                mark = "✎ " if changed else ""
                return f"{mark}{title}{' '.join(r.text.split())}"
        if role == Qt.ItemDataRole.ToolTipRole and col == "entry":
            extra = "\n\nEdited since this answer: ask again to see the effect." if changed else ""
            return f"Entry {r.id} of {r.pack}\n{r.text}\n\nsource: {r.source or '—'}{extra}\n\nClick to open it in the editor."
        if role == Qt.ItemDataRole.TextAlignmentRole and col == "#":
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.FontRole and changed and col == "entry":
            from PySide6.QtGui import QFont

            f = QFont()
            f.setItalic(True)
            return f
        return None
