"""Widgets that ask for the room their text needs, so a 1280 x 800 window shows it whole.

A tool button with an instant-popup menu draws its arrow over the end of its text (the
"Selected" and "Export" buttons read "Selecte⌄"), and a line edit shrinks below its
placeholder, which Qt then cuts with "…"; a word-wrapped label in a splitter pane is
squeezed below its lines (the "Without memory" answer lost its second line). All sizes come from the font's metrics, so a
larger font (``QT_SCALE_FACTOR``) asks for more room instead of cutting more.
"""
from __future__ import annotations

from PySide6.QtCore import QSize
from PySide6.QtWidgets import QLabel, QLineEdit, QStyle, QStyleOptionFrame, QToolButton


class MenuToolButton(QToolButton):
    """A text tool button whose menu opens on click, with room for the menu's arrow."""

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        s = super().sizeHint()
        if self.menu() is not None and self.popupMode() == QToolButton.ToolButtonPopupMode.InstantPopup:
            s.setWidth(s.width() + self.style().pixelMetric(QStyle.PixelMetric.PM_MenuButtonIndicator, None, self))
        return s

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt API
        return self.sizeHint()


def placeholder_width(edit: QLineEdit, texts: list[str] | None = None) -> int:
    """The width ``edit`` needs to show the longest of ``texts`` (its placeholder by default)
    whole: the text, Qt's 2 px margin a side, the frame and style-sheet padding, and the clear
    button's room when it has one."""
    texts = texts or [edit.placeholderText()]
    fm = edit.fontMetrics()
    text = max(fm.horizontalAdvance(t) for t in texts)
    opt = QStyleOptionFrame()
    edit.initStyleOption(opt)
    inner = edit.style().subElementRect(QStyle.SubElement.SE_LineEditContents, opt, edit).width()
    frame = max(0, edit.width() - inner)  # frame and padding, at whatever width it has now
    clear = fm.height() + 4 if edit.isClearButtonEnabled() else 0
    m = edit.textMargins()
    return text + 4 + frame + m.left() + m.right() + clear


def fit_placeholder(edit: QLineEdit, texts: list[str] | None = None) -> None:
    """Never narrower than its placeholder (the longest of ``texts``, when it changes)."""
    edit.ensurePolished()  # the style sheet's font and padding first
    edit.setMinimumWidth(placeholder_width(edit, texts))


class WrappedLabel(QLabel):
    """A word-wrapped label that is never shorter than its lines at its current width.

    A splitter does not ask a label's height for its width, so a pane made small (by the
    user, or by a notice shown below it) cut the label's last lines; this one keeps a
    minimum height of exactly what its text needs, which a splitter does respect.
    """

    def __init__(self, text: str = "", parent=None) -> None:
        super().__init__(text, parent)
        self.setWordWrap(True)

    def setText(self, text: str) -> None:  # noqa: N802 - Qt API
        super().setText(text)
        self._fit()

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)
        self._fit()

    def _fit(self) -> None:
        h = self.heightForWidth(max(1, self.width())) if self.text() else 0
        h = max(h, self.fontMetrics().height() + self.contentsMargins().top() + self.contentsMargins().bottom())
        if h != self.minimumHeight():
            self.setMinimumHeight(h)
