"""The generated section of a docs page: the text between two marker lines, written by a script, checked by a test.

``replace_section(page, begin, end, text)`` puts ``text`` between the markers and leaves the rest of the page as
it is (the prose around a table is written by hand); the file is written to a temporary name and renamed, so a
failure leaves the old page whole.  The scripts that render pages from recorded runs
(``make_readme_results.py``, ``make_compression_page.py``, ``compare_allocation.py``, ``compare_methods.py``)
share it.
"""
import os
import sys


def replace_section(page, begin, end, text, edit_around=None):
    """Write ``text`` between the lines ``begin`` and ``end`` of the file ``page``.

    ``edit_around`` (optional): a function applied to the text before and after the section (e.g. to update a
    number the hand-written prose repeats).  A page without exactly one of each marker is refused with the lines
    to add."""
    with open(page, encoding="utf-8") as f:
        whole = f.read()
    if whole.count(begin) != 1 or whole.count(end) != 1:
        sys.exit(f"{page} needs its generated section's two marker lines, once each:\n{begin}\n{end}")
    head, rest = whole.split(begin, 1)
    _, tail = rest.split(end, 1)
    if edit_around is not None:
        head, tail = edit_around(head), edit_around(tail)
    with open(page + ".tmp", "w", encoding="utf-8") as f:
        f.write(head + begin + "\n" + text + "\n" + end + tail)
    os.replace(page + ".tmp", page)
