"""A delegate that draws a number as a bar behind its text.

The model answers ``BAR_ROLE`` with ``(value, scale, signed)``: unsigned values fill
from the left in proportion to ``value / scale``; signed ones grow right (positive,
blue) or left (negative, red) from the middle. Colours are fixed accents that read on
light and dark palettes; the text keeps the palette's colour.
"""
from __future__ import annotations

from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QPainter
from PySide6.QtWidgets import QStyle, QStyledItemDelegate, QStyleOptionViewItem

from app.models.explanation_table import BAR_ROLE

POSITIVE = QColor(47, 123, 216, 150)
NEGATIVE = QColor(200, 60, 50, 150)
NEUTRAL = QColor(47, 123, 216, 110)


class BarDelegate(QStyledItemDelegate):
    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index) -> None:
        bar = index.data(BAR_ROLE)
        if not bar:
            super().paint(painter, option, index)
            return
        value, scale, signed = bar
        opt = QStyleOptionViewItem(option)
        self.initStyleOption(opt, index)
        style = opt.widget.style() if opt.widget else None
        # background + selection first, then the bar, then the text on top
        text = opt.text
        opt.text = ""
        if style is not None:
            style.drawControl(QStyle.ControlElement.CE_ItemViewItem, opt, painter, opt.widget)
        r = QRectF(opt.rect).adjusted(3, 4, -3, -4)
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, False)
        frac = 0.0 if scale <= 0 else max(-1.0, min(1.0, value / scale))
        if signed:
            mid = r.left() + r.width() / 2
            w = abs(frac) * r.width() / 2
            rect = QRectF(mid, r.top(), w, r.height()) if frac >= 0 else QRectF(mid - w, r.top(), w, r.height())
            painter.fillRect(rect, POSITIVE if frac >= 0 else NEGATIVE)
            painter.setPen(opt.palette.color(opt.palette.ColorRole.Mid))
            painter.drawLine(int(mid), int(r.top()) - 2, int(mid), int(r.bottom()) + 2)
        else:
            painter.fillRect(QRectF(r.left(), r.top(), max(0.0, frac) * r.width(), r.height()), NEUTRAL)
        painter.restore()
        painter.save()
        selected = bool(opt.state & QStyle.StateFlag.State_Selected)
        role = opt.palette.ColorRole.HighlightedText if selected else opt.palette.ColorRole.Text
        painter.setPen(opt.palette.color(role))
        painter.drawText(QRectF(opt.rect).adjusted(6, 0, -6, 0), int(Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight), text)
        painter.restore()
