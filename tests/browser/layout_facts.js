// Layout faults a person would see, measured in the page by tests/browser/test_layout.py
// (page.evaluate(source, options)): a list of sentences, empty when the page reads whole.
//   options.snugButtons: a selector; the buttons it matches must be no wider than their label needs.
//   options.skip: a selector of regions drawn by someone else's stylesheet (Swagger UI), left alone.
//   options.oneLine: a selector of things that must never break across lines (amounts, badges).
({ snugButtons, skip, oneLine }) => {
  const problems = [];
  const root = document.documentElement;
  const viewport = root.clientWidth;
  const px = (value) => parseFloat(value) || 0;
  const context = document.createElement("canvas").getContext("2d");

  const describe = (el) => {
    const tag = el.tagName.toLowerCase();
    if (el.id) return `${tag}#${el.id}`;
    const label = el.labels && el.labels[0] ? el.labels[0].textContent : el.textContent || el.value || "";
    return `${tag} "${label.trim().replace(/\s+/g, " ").slice(0, 40)}"`;
  };
  const shown = (el) => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== "hidden";
  const textWidth = (text, el) => {
    const s = getComputedStyle(el);
    context.font = `${s.fontStyle} ${s.fontWeight} ${s.fontSize} ${s.fontFamily}`;
    return context.measureText(text).width + px(s.letterSpacing) * text.length;
  };
  const room = (el) => {
    const s = getComputedStyle(el);
    return el.clientWidth - px(s.paddingLeft) - px(s.paddingRight);
  };
  // Inside a box that scrolls sideways on its own (a wide table on a phone), a control may lie beyond
  // the window: the box scrolls to it.
  const inScrollingBox = (el) => {
    for (let node = el.parentElement; node && node !== document.body; node = node.parentElement) {
      if (["auto", "scroll"].includes(getComputedStyle(node).overflowX)) return true;
    }
    return false;
  };

  if (root.scrollWidth > viewport) {
    problems.push(`the page scrolls sideways: ${root.scrollWidth}px of content in a ${viewport}px window`);
  }
  const controls = "input:not([type=hidden]), select, textarea, button, [role=button]";
  for (const el of document.querySelectorAll(controls)) {
    if (!shown(el) || (skip && el.closest(skip))) continue;
    const box = el.getBoundingClientRect();
    if ((box.left < -0.5 || box.right > viewport + 0.5) && !inScrollingBox(el)) {
      problems.push(`${describe(el)} sticks out of the window (${Math.round(box.left)}..${Math.round(box.right)}px of ${viewport}px)`);
    }
    if (el.scrollWidth > el.clientWidth + 1) {
      problems.push(`${describe(el)} cuts its content (${el.scrollWidth}px in ${el.clientWidth}px)`);
    }
    // What a select or a text field shows is drawn inside the control, where scrollWidth cannot see
    // it: measure each choice (and the value and placeholder) in the control's own font.
    let texts = [];
    if (el.tagName === "SELECT") texts = [...el.options].map((option) => option.text);
    else if (el.tagName === "INPUT" && ["text", "search", "email", "password", "url", "tel", "number"].includes(el.type)) {
      texts = [el.value, el.placeholder];
    }
    for (const text of texts.map((t) => t.trim()).filter(Boolean)) {
      const needed = textWidth(text, el);
      if (needed > room(el) + 1) {
        problems.push(`${describe(el)} cuts "${text}": ${Math.ceil(needed)}px of text in ${Math.floor(room(el))}px`);
      }
    }
    if (snugButtons && el.matches(snugButtons)) {
      const label = document.createRange();
      label.selectNodeContents(el);
      const s = getComputedStyle(el);
      const snug = label.getBoundingClientRect().width + px(s.paddingLeft) + px(s.paddingRight)
        + px(s.borderLeftWidth) + px(s.borderRightWidth);
      if (box.width > snug + 2) {
        problems.push(`${describe(el)} is stretched to ${Math.round(box.width)}px for a ${Math.round(snug)}px label`);
      }
    }
  }
  if (oneLine) {
    for (const el of document.querySelectorAll(oneLine)) {
      if (!shown(el) || (skip && el.closest(skip))) continue;
      const text = document.createRange();
      text.selectNodeContents(el);
      const lines = new Set([...text.getClientRects()].filter((r) => r.width > 0).map((r) => Math.round(r.bottom)));
      const words = el.textContent.trim().replace(/\s+/g, " ");
      if (lines.size > 1) problems.push(`${describe(el)} breaks across ${lines.size} lines: "${words}"`);
      if (getComputedStyle(el).display !== "inline" && el.scrollWidth > el.clientWidth + 1) {
        problems.push(`${describe(el)} spills out of its box: "${words}" needs ${el.scrollWidth}px, has ${el.clientWidth}px`);
      }
    }
  }
  return problems;
}
