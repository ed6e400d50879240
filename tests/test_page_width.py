"""Every page of the built book fits its column: at a 1280 px window no element of a page's article
needs a horizontal scroll bar or sticks out of the article; at 800 px only a table may scroll,
inside its own box.

A reader of a wide code cell or printed line sees a scroll bar and half a line; the notebooks wrap
their code and print short lines, and tables are made narrow, so that nothing needs one. The book
is the one tests/conftest.py executes on tiny parameters and builds (with the real user pages).
Another built book can be measured with
``python tests/test_page_width.py book/_build/html``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

# Elements that need a horizontal scroll bar (their content is wider than their box, and they
# scroll), and elements that stick out of the article's right edge without a scrolling or clipping
# ancestor to hold them. With allowTables, a table and what holds it may scroll.
WIDE = """(allowTables) => {
  const art = document.querySelector('article.bd-article') || document.querySelector('main');
  const right = art.getBoundingClientRect().right;
  const clipped = (el) => {
    for (let a = el.parentElement; a && a !== art; a = a.parentElement) {
      if (getComputedStyle(a).overflowX !== 'visible') return true;
    }
    return false;
  };
  // a table, a cell of one, or a box whose overflowing content is a table (pandas wraps its
  // tables in a div and a style)
  const isTable = (el) => {
    if (el.tagName === 'TABLE' || el.closest('table') !== null) return true;
    const t = el.querySelector('table');
    return t !== null && t.getBoundingClientRect().width >= el.scrollWidth - 2;
  };
  const out = [];
  for (const el of art.querySelectorAll('*')) {
    const cs = getComputedStyle(el);
    const box = el.getBoundingClientRect();
    if (box.width === 0 && box.height === 0) continue;  // hidden: a collapsed cell, a tooltip
    const scrolls = ['auto', 'scroll'].includes(cs.overflowX) && el.scrollWidth > el.clientWidth + 1;
    const sticksOut = box.right > right + 1 && !clipped(el);
    if (!scrolls && !sticksOut) continue;
    if (allowTables && isTable(el)) continue;
    const text = (el.innerText || '').trim().split('\\n')[0].slice(0, 70);
    out.push(`${el.tagName.toLowerCase()}.${[...el.classList].join('.')} `
             + `${Math.round(Math.max(el.scrollWidth, box.width))} px in ${Math.round(el.clientWidth)}: ${text}`);
  }
  return out;
}"""


def book_pages(built: Path) -> list[str]:
    """The built pages, in the table of contents' order."""
    toc = yaml.safe_load((ROOT / "book" / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]
    return [f"{f}.html" for f in files if (built / f"{f}.html").exists()]


def wide_elements(built: Path, pages: list[str], width: int, allow_tables: bool) -> dict[str, list[str]]:
    """{page: [element that needs a horizontal scroll]} at a window ``width`` px wide."""
    from playwright.sync_api import sync_playwright
    found = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": width, "height": 900})
        for name in pages:
            page.goto((built / name).as_uri())
            page.wait_for_load_state("load")
            # MathJax changes the widths of the math it typesets
            page.wait_for_function("() => !window.MathJax || !MathJax.startup || MathJax.startup.promise",
                                   timeout=10000)
            page.evaluate("() => window.MathJax && MathJax.startup ? MathJax.startup.promise : null")
            wide = page.evaluate(WIDE, allow_tables)
            if wide:
                found[name] = wide
        browser.close()
    return found


def test_the_check_sees_a_wide_line(tmp_path):
    # the measurement itself: a page with one over-long code line and one narrow one
    long = "x = " + "1 + " * 200 + "1"
    page = tmp_path / "wide.html"
    page.write_text("<html><body><main style='width: 690px'><div class='highlight'>"
                    f"<pre style='overflow-x: auto'>{long}</pre></div><pre>y = 1</pre></main></body></html>")
    found = wide_elements(tmp_path, ["wide.html"], 1280, allow_tables=True)
    assert list(found) == ["wide.html"] and len(found["wide.html"]) == 1, found


def test_every_page_fits_at_1280(built):
    pages = book_pages(built)
    assert len(pages) >= 15, pages  # the introduction, 7 chapters, the user pages
    found = wide_elements(built, pages, 1280, allow_tables=False)
    assert not found, "\n".join(f"{p}:\n  " + "\n  ".join(w) for p, w in found.items())


def test_at_800_only_tables_scroll(built):
    found = wide_elements(built, book_pages(built), 800, allow_tables=True)
    assert not found, "\n".join(f"{p}:\n  " + "\n  ".join(w) for p, w in found.items())


if __name__ == "__main__":
    built = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "book" / "_build" / "html").resolve()
    width = int(sys.argv[2]) if len(sys.argv) > 2 else 1280
    result = wide_elements(built, book_pages(built), width, allow_tables=width < 1280)
    for name, wide in result.items():
        print(f"{name}: {len(wide)}")
        for w in wide:
            print(f"  {w}")
    print(f"{sum(map(len, result.values()))} elements need a horizontal scroll on {len(result)} pages at {width} px")
    sys.exit(1 if result else 0)
