"""Published reference tables: which concern each task, and what is named but not transcribed."""
from __future__ import annotations

from cxrcore import published


def test_published_tables_are_per_task():
    nih = published.tables("nih14-local")
    assert ["MedMNIST v2" in nih[0].title, "CheXNet" in nih[1].title] == [True, True]
    assert isinstance(nih[1].rows, list) and len(nih[1].rows) == 14 and nih[0].source
    assert [t.title for t in published.tables("pneumoniamnist-local")] == ["MedMNIST v2: pneumoniamnist"]
    assert published.tables("unknown") == []


def test_untranscribed_tables_are_named_for_their_task_only():
    assert len(published.not_transcribed("nih14-local")) == len(published.NOT_TRANSCRIBED)
    assert published.not_transcribed("pneumoniamnist-local") == []
