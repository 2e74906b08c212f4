"""Text that is cut to the room it has instead of making its window wider.

A ``QLabel`` (or a group box title) asks for the width of its whole text: a status bar
listing six plugged packs with long names, or an answer box titled with them, made the
main window 2,500 pixels wide. Here the text is cut with "…" to the width the layout
gives, and the whole text goes in the tooltip.
"""
from __future__ import annotations

from PySide6.QtCore import QSize, Qt
from PySide6.QtWidgets import QGroupBox, QLabel, QSizePolicy, QWidget

#: The least room asked for, in average characters (the rest of the text is cut).
MIN_CHARS = 12


def elided(widget: QWidget, text: str, width: int) -> str:
    """``text`` cut with "…" at the right to fit ``width`` pixels in ``widget``'s font."""
    return widget.fontMetrics().elidedText(text, Qt.TextElideMode.ElideRight, max(0, int(width)))


class ElidedLabel(QLabel):
    """A one-line label showing as much of its text as fits; the whole text in the tooltip.

    ``text()`` is the whole text (as set); ``shown()`` is what is drawn now.
    """

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._full = ""
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
        self.setText(text)

    def setText(self, text: str) -> None:  # noqa: N802 (Qt's name)
        self._full = text or ""
        self.setToolTip(self._full)
        self._refresh()
        self.updateGeometry()

    def text(self) -> str:  # noqa: D401 - Qt's name
        return self._full

    def shown(self) -> str:
        return super().text()

    def sizeHint(self) -> QSize:  # noqa: N802
        fm = self.fontMetrics()
        m = self.contentsMargins()
        # + 4: the 2 px _refresh keeps free, and 2 for elidedText measuring a pixel wider than
        # horizontalAdvance (given exactly its hint, "Plugged in: facts" read "Plugged in: fa…")
        return QSize(fm.horizontalAdvance(self._full) + m.left() + m.right() + 4, super().sizeHint().height())

    def minimumSizeHint(self) -> QSize:  # noqa: N802
        fm = self.fontMetrics()
        want = min(fm.horizontalAdvance(self._full), fm.averageCharWidth() * MIN_CHARS)
        return QSize(want + 2, super().minimumSizeHint().height())

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        self._refresh()

    def _refresh(self) -> None:
        m = self.contentsMargins()
        QLabel.setText(self, elided(self, self._full, self.width() - m.left() - m.right() - 2))


class ElidedGroupBox(QGroupBox):
    """A group box whose title is cut to the box's width (the whole title in the tooltip)."""

    def __init__(self, title: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._full = ""
        self.setTitle(title)

    def setTitle(self, title: str) -> None:  # noqa: N802
        self._full = title or ""
        self.setToolTip(self._full)
        self._refresh()

    def title(self) -> str:
        return self._full

    def _width_for(self, inner: int) -> int:
        # the contents' width and room for a few characters of the title: not the whole title
        m = self.contentsMargins()
        return max(inner + m.left() + m.right(), self.fontMetrics().averageCharWidth() * (MIN_CHARS + 2) + 16)

    def minimumSizeHint(self) -> QSize:  # noqa: N802
        lay = self.layout()
        return QSize(self._width_for(lay.minimumSize().width() if lay else 0), super().minimumSizeHint().height())

    def sizeHint(self) -> QSize:  # noqa: N802
        lay = self.layout()
        return QSize(self._width_for(lay.sizeHint().width() if lay else 0), super().sizeHint().height())

    def shown_title(self) -> str:
        return super().title()

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        self._refresh()

    def _refresh(self) -> None:
        # the title's indent and padding (Fusion: 8 pixels, and as much again to be safe)
        room = self.width() - 16
        shown = elided(self, self._full, room)
        if shown != super().title():
            QGroupBox.setTitle(self, shown)
