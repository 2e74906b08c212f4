"""The Workspace and Entry docks side by side when the window is wide enough, else in one column.

Side by side, the two docks and the tabs' minimum need about 1,234 px (measured at 1024 x 700
with the app's style sheet), so a 1024 px screen got a window wider than itself. Below the
width they need, the Entry dock goes under the Workspace list in the left column (which then
takes the window's full height); where even that column is too short, they become tabs of
one dock area, with the docks that share the left column (the Patches list and the Product-key
memory list, tabs of one area under the Workspace list). Both stay open either way, and widening the window puts them back.
A dock the user has moved, floated or closed is left where it is.
"""
from __future__ import annotations

from typing import Callable, Sequence

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDockWidget, QLayout, QMainWindow, QStyle

SIDE, STACKED, TABBED = "side", "stacked", "tabbed"
LEFT, RIGHT = Qt.DockWidgetArea.LeftDockWidgetArea, Qt.DockWidgetArea.RightDockWidgetArea


def _open(d: QDockWidget) -> bool:
    """Not closed by the user (a tab behind another one is open, though not visible)."""
    return d.toggleViewAction().isChecked()


class SideDocks:
    """Arranges ``left`` and ``right`` (docks of ``win``) for the window's current size."""

    def __init__(self, win: QMainWindow, left: QDockWidget, right: QDockWidget, fit: Callable[[], None],
                 below: Sequence[QDockWidget] = ()) -> None:
        self.win, self.left, self.right, self.fit = win, left, right, fit  # fit: size the docks to their content
        self.below = list(below)  # docks under ``left`` in its column: tabbed with it when room is short
        self.mode = SIDE
        self._busy = False
        self._min_height = 0  # the layout's, with the docks side by side or tabbed
        # the window's minimum size is ours to set (the narrowest arrangement's), not the
        # current layout's, or the window could never become small enough to rearrange
        win.layout().setSizeConstraint(QLayout.SizeConstraint.SetNoConstraint)

    def _sep(self) -> int:
        return self.win.style().pixelMetric(QStyle.PixelMetric.PM_DockWidgetSeparatorExtent, None, self.win)

    def _chrome_height(self) -> int:
        w = self.win
        bars = [b for b in (w.menuBar(), w.statusBar()) if b is not None and b.isVisible()]
        return sum(b.sizeHint().height() for b in bars)

    def width_needed(self, mode: str) -> int:
        """Window width at which ``mode`` shows every dock and the tabs at their minimum."""
        central = self.win.centralWidget().minimumSizeHint().width()
        docks = [d.minimumSizeHint().width() for d in (self.left, self.right) if _open(d)]
        if not docks:
            return central
        if mode == SIDE:
            return central + sum(docks) + len(docks) * self._sep()
        return central + max(docks) + self._sep()

    def height_needed_stacked(self) -> int:
        column = [self.left, self.right] + [d for d in self.below if _open(d) and not d.isFloating()]
        return self._chrome_height() + sum(d.minimumSizeHint().height() + self._sep() for d in column)

    def _ours(self) -> bool:
        """Both docks open, docked, and where this class put them (not moved by the user)."""
        w, l, r = self.win, self.left, self.right
        if l.isFloating() or r.isFloating() or w.dockWidgetArea(l) != LEFT:
            return False
        want = RIGHT if self.mode == SIDE else LEFT
        return w.dockWidgetArea(r) == want

    def detect(self) -> None:
        """The mode a restored window state left the docks in."""
        w = self.win
        if w.dockWidgetArea(self.left) == LEFT and w.dockWidgetArea(self.right) == LEFT:
            self.mode = TABBED if self.right in w.tabifiedDockWidgets(self.left) else STACKED
        else:
            self.mode = SIDE

    def arrange(self) -> None:
        """Choose the arrangement that fits the window's size, and move the docks to it."""
        if self._busy or not self.win.isVisible():
            return
        self._busy = True
        try:
            both = _open(self.left) and _open(self.right)
            if both and self._ours():
                if self.win.width() >= self.width_needed(SIDE):
                    want = SIDE
                elif self.win.height() >= self.height_needed_stacked():
                    want = STACKED
                else:
                    want = TABBED
                if want != self.mode:
                    self._move(want)
            if self.mode != STACKED:  # stacked needs more height; shorter, it becomes tabbed
                self._min_height = self.win.layout().minimumSize().height()
            self.win.setMinimumSize(min(self.width_needed(TABBED), self.width_needed(SIDE)), self._min_height)
        finally:
            self._busy = False

    def _move(self, mode: str) -> None:
        w, l, r = self.win, self.left, self.right
        below = [d for d in self.below if not d.isFloating() and w.dockWidgetArea(d) == LEFT]
        if self.mode != SIDE:
            w.addDockWidget(RIGHT, r)  # back to its own area first
        if self.mode == TABBED:
            for i, d in enumerate(below):  # out of the tabs, under the Workspace list again, as tabs of one area
                if i == 0:
                    w.addDockWidget(LEFT, d)
                else:
                    w.tabifyDockWidget(below[0], d)
            if below:
                below[0].raise_()
        if mode == SIDE:
            w.setCorner(Qt.Corner.BottomLeftCorner, Qt.DockWidgetArea.BottomDockWidgetArea)
        else:
            # the left column takes the full height (the Jobs dock stays under the tabs)
            w.setCorner(Qt.Corner.BottomLeftCorner, LEFT)
            if mode == STACKED:
                w.splitDockWidget(l, r, Qt.Orientation.Vertical)
            else:
                w.tabifyDockWidget(l, r)
                for d in below:
                    w.tabifyDockWidget(l, d)
            r.show()
            r.raise_()  # the entry being edited in front: a pack is one click away
        self.mode = mode
        self.fit()
