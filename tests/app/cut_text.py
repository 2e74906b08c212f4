"""Find text a user cannot read whole in a shown window: cut by its own widget or by a parent.

Used by the layout tests (and by hand, on a real window) to list every label, button,
placeholder, group title and combo box whose text does not fit the room it was given at a
window size. A widget that cuts on purpose (``ElidedLabel``) counts as cut only when it
shows less than its text; its tooltip holds the whole.
"""
from __future__ import annotations

from PySide6.QtCore import QRect, Qt
from PySide6.QtGui import Qt as GuiQt
from PySide6.QtWidgets import (
    QAbstractButton,
    QAbstractScrollArea,
    QComboBox,
    QGroupBox,
    QLabel,
    QLineEdit,
    QPushButton,
    QStyle,
    QStyleOptionComboBox,
    QStyleOptionFrame,
    QStyleOptionViewItem,
    QTabBar,
    QToolButton,
    QWidget,
)


def _name(w: QWidget) -> str:
    text = ""
    for get in ("text", "title", "placeholderText", "currentText"):
        if hasattr(w, get):
            try:
                text = getattr(w, get)() or text
            except TypeError:
                continue
            if text:
                break
    return f"{type(w).__name__}({w.objectName() or ''}{': ' if w.objectName() else ''}{text[:40]!r})"


def _inside_scrolled_viewport(w: QWidget) -> bool:
    """Widgets in a scroll area's viewport (cell widgets, scrolled pages) are meant to scroll."""
    p = w.parentWidget()
    while p is not None:
        gp = p.parentWidget()
        if isinstance(gp, QAbstractScrollArea) and gp.viewport() is p:
            return True
        p = gp
    return False


def _clipped_by_parents(w: QWidget, top: QWidget) -> bool:
    """True when an ancestor's rectangle cuts off part of ``w`` (a row wider than its pane)."""
    r = QRect(w.mapTo(top, w.rect().topLeft()), w.size())
    p = w.parentWidget()
    while p is not None and p is not top.parentWidget():
        pr = QRect(p.mapTo(top, p.rect().topLeft()), p.size())
        if not pr.contains(r):
            return True
        p = p.parentWidget()
    return False


def _label_problem(w: QLabel) -> str | None:
    text = w.text()
    if not text or w.pixmap() is not None and not w.pixmap().isNull():
        return None
    shown = w.shown() if hasattr(w, "shown") else text  # ElidedLabel: what is drawn
    if shown != text:
        return f"shows {shown!r}"
    if GuiQt.mightBeRichText(text) or w.textFormat() == Qt.TextFormat.RichText:
        # rich text (help pages, headings): its document decides; only its height can be short
        return None if w.heightForWidth(w.contentsRect().width()) <= w.contentsRect().height() + 1 else "rich text taller than its label"
    cr = w.contentsRect()
    fm = w.fontMetrics()
    if w.wordWrap():
        need = fm.boundingRect(QRect(0, 0, max(1, cr.width() - 2 * w.margin()), 100_000),
                               int(Qt.TextFlag.TextWordWrap), text).height()
        return f"needs {need} px of height, has {cr.height()}" if need > cr.height() + 1 else None
    lines = text.split("\n")
    need = max(fm.horizontalAdvance(line) for line in lines) + 2 * w.margin()
    if need > cr.width():
        return f"needs {need} px, has {cr.width()}"
    return None


def _button_problem(w: QAbstractButton) -> str | None:
    if not w.text():
        return None
    # sizeHint is the text, icon, frame and (QPushButton) the menu arrow: less is a cut
    need = w.sizeHint().width()
    if isinstance(w, QToolButton) and w.menu() is not None and w.popupMode() == QToolButton.ToolButtonPopupMode.InstantPopup:
        # the arrow of a tool button's menu is drawn over the text's end unless there is room
        # for it (Qt's own size hint leaves none)
        need = QToolButton.sizeHint(w).width() + w.style().pixelMetric(QStyle.PixelMetric.PM_MenuButtonIndicator, None, w)
    if need > w.width() + 1:
        return f"needs {need} px, has {w.width()}"
    return None


def _line_edit_problem(w: QLineEdit) -> str | None:
    ph = w.placeholderText()
    if w.text() or not ph:
        return None
    # the text's room as the style lays it out (style-sheet padding included), less Qt's
    # 2 px margin a side and the text margins
    opt = QStyleOptionFrame()
    w.initStyleOption(opt)
    rect = w.style().subElementRect(QStyle.SubElement.SE_LineEditContents, opt, w)
    room = rect.width() - 4 - w.textMargins().left() - w.textMargins().right()
    need = w.fontMetrics().horizontalAdvance(ph)
    return f"placeholder needs {need} px, has {room}" if need > room else None


def _combo_problem(w: QComboBox) -> str | None:
    text = w.currentText()
    if not text or w.isEditable():
        return None
    opt = QStyleOptionComboBox()
    w.initStyleOption(opt)
    field = w.style().subControlRect(QStyle.ComplexControl.CC_ComboBox, opt,
                                     QStyle.SubControl.SC_ComboBoxEditField, w)
    need = w.fontMetrics().horizontalAdvance(text)
    return f"needs {need} px, has {field.width()}" if need > field.width() else None


def _group_problem(w: QGroupBox) -> str | None:
    title = w.title()
    shown = w.shown_title() if hasattr(w, "shown_title") else title
    if shown != title:
        return f"title shows {shown!r}"
    need = w.fontMetrics().horizontalAdvance(title) + 16
    return f"title needs {need} px, has {w.width()}" if title and need > w.width() else None


def cut_text_of(w: QWidget, top: QWidget) -> str | None:
    """Why ``w``'s text is not shown whole inside ``top`` (its window, say), or None."""
    if isinstance(w, QLabel):
        why = _label_problem(w)
    elif isinstance(w, (QPushButton, QToolButton)):
        why = _button_problem(w)
    elif isinstance(w, QLineEdit):
        why = _line_edit_problem(w)
    elif isinstance(w, QComboBox):
        why = _combo_problem(w)
    elif isinstance(w, QGroupBox):
        why = _group_problem(w)
    else:
        return None
    if why is None and (w.text() if hasattr(w, "text") and callable(w.text) else True) and _clipped_by_parents(w, top):
        why = "cut off by its pane"
    return why


def cut_texts(top: QWidget) -> list[str]:
    """Every visible text under ``top`` that is not shown whole, as 'widget: why'."""
    found = []
    for w in [top] + top.findChildren(QWidget):
        if not w.isVisible() or w.width() <= 0 or isinstance(w, QTabBar) or _inside_scrolled_viewport(w):
            continue
        if w is not top and not QRect(w.mapTo(top, w.rect().topLeft()), w.size()).intersects(top.rect()):
            continue  # not on screen: a dock behind another one's tab is moved out of the window
        why = cut_text_of(w, top)
        if why:
            found.append(f"{_name(w)}: {why}")
    return found


def cut_cells(view, skip: tuple[str, ...] = ()) -> list[str]:
    """Header titles and visible cells of ``view`` (a table or tree) shown cut, and columns
    pushed out of sight (past the viewport's right edge). ``skip``: header names of the long
    text columns that may cut a cell (their whole text is in its tooltip)."""
    model, hh = view.model(), view.header() if hasattr(view, "header") else view.horizontalHeader()
    found = []
    fm = view.fontMetrics()
    margin = view.style().pixelMetric(QStyle.PixelMetric.PM_FocusFrameHMargin, None, view) + 1
    right = view.viewport().width()
    for col in range(model.columnCount()):
        if hh.isSectionHidden(col):
            continue
        name = str(model.headerData(col, Qt.Orientation.Horizontal) or "")
        x, w = hh.sectionViewportPosition(col), hh.sectionSize(col)
        if x + w > right + 1 and name not in skip:
            found.append(f"column {name!r}: ends at {x + w} px, past the view's {right}")
            continue
        need = hh.sectionSizeHint(col)  # the header's own measure: title, padding, sort arrow
        if hh.isSortIndicatorShown() and col != hh.sortIndicatorSection():
            # Qt counts the arrow's room in every section; only the sorted one draws it
            need -= hh.height() + hh.style().pixelMetric(QStyle.PixelMetric.PM_HeaderMargin, None, hh)
        if name and need > w:
            found.append(f"header {name!r}: needs {need} px, has {w}")
        if name in skip:
            continue
        first = view.indexAt(view.viewport().rect().topLeft()).row() if hasattr(view, "indexAt") else 0
        for row in range(max(0, first), min(model.rowCount(), max(0, first) + 60)):
            idx = model.index(row, col)
            text = idx.data()
            if text is None or not str(text):
                continue
            text = str(text)
            f = idx.data(Qt.ItemDataRole.FontRole)
            cfm = fm if f is None else type(fm)(f)
            # what the view's delegate asks for this cell (text, check box, icon, margins)
            opt = QStyleOptionViewItem()
            view.initViewItemOption(opt)
            need = view.itemDelegateForIndex(idx).sizeHint(opt, idx).width()
            indent = view.indentation() if hasattr(view, "indentation") and view.rootIsDecorated() and col == 0 else 0
            need += indent
            icon = need - cfm.horizontalAdvance(text) - 2 * margin
            if need > w and getattr(view, "wordWrap", lambda: False)() and hasattr(view, "rowHeight"):
                tall = cfm.boundingRect(QRect(0, 0, max(1, w - 2 * margin - 4 - icon), 100_000),
                                        int(Qt.TextFlag.TextWordWrap), text).height()
                need = w if tall <= view.rowHeight(row) else need  # wrapped onto lines it has room for
            if need > w:
                found.append(f"cell ({row}, {name!r}) {text[:30]!r}: needs {need} px, has {w}")
                break  # one per column is enough
    return found
