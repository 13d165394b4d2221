// Charts from numbers the server put in the page (web/templates/macros/chart.html), drawn with the
// vendored Chart.js (web/static/vendor/chartjs/). No inline script, no inline style: the data travels in
// a <script type="application/json"> block, which is data the browser never runs (the CSP allows it),
// and sizes are set through the CSSOM, which style-src 'self' allows.
//
// Each chart also writes its numbers into the page as a table (under "Show the numbers"), built from
// the data the chart was given, so a person without the picture, a screen reader and a browser test all
// read what the chart draws. The figure's data-chart-state says when that is done: "drawn", or
// "table-only" when Chart.js did not load (the table is there all the same).
"use strict";

(function () {
  // Colours by meaning (a series' "tone"), read from CSS custom properties --chart-<tone> in app.css,
  // so a tone looks the same as the status words; series without a tone take the palette in turn.
  const PALETTE = ["primary", "secondary", "tertiary", "quaternary"];

  function color(figure, tone, index) {
    const styles = getComputedStyle(figure);
    const named = tone ? styles.getPropertyValue(`--chart-${tone}`).trim() : "";
    return named || styles.getPropertyValue(`--chart-${PALETTE[index % PALETTE.length]}`).trim() || "#1b3f8f";
  }

  // Values are plain counts, or amounts in minor units of one currency ("money": {currency, exponent}).
  function formatter(spec) {
    if (spec.money) {
      const exponent = spec.money.exponent;
      const format = new Intl.NumberFormat("en", {
        style: "currency",
        currency: spec.money.currency,
        minimumFractionDigits: exponent,
        maximumFractionDigits: exponent,
      });
      return (value) => format.format(value / 10 ** exponent);
    }
    const format = new Intl.NumberFormat("en");
    return (value) => format.format(value);
  }

  // At most about a third of the chart's width for an axis label (28 characters on a laptop screen).
  function shortLabel(value) {
    const label = String(this.getLabelForValue(value));
    const longest = Math.min(28, Math.max(8, Math.floor(this.chart.width / 20)));
    return label.length > longest ? `${label.slice(0, longest - 1)}…` : label;
  }

  function config(figure, spec, format) {
    const horizontal = spec.kind === "horizontal-bar";
    const stacked = spec.kind === "stacked-bar";
    const valueAxis = horizontal ? "x" : "y";
    const reduceMotion = window.matchMedia("(prefers-reduced-motion: reduce)").matches;
    const scales = {
      [valueAxis]: { beginAtZero: true, stacked, ticks: { callback: (value) => format(value), precision: 0 } },
      // A long label is shortened on the axis (whole in the tooltip and the numbers table).
      [horizontal ? "y" : "x"]: { stacked, ticks: { callback: shortLabel } },
    };
    return {
      type: spec.kind === "line" ? "line" : "bar",
      data: {
        labels: spec.labels.slice(),
        datasets: spec.series.map((series, index) => ({
          label: series.name,
          data: series.values.slice(),
          backgroundColor: color(figure, series.tone, index),
          borderColor: color(figure, series.tone, index),
          maxBarThickness: 48,
        })),
      },
      options: {
        indexAxis: horizontal ? "y" : "x",
        responsive: true,
        maintainAspectRatio: false,
        animation: reduceMotion ? false : { duration: 300 },
        scales,
        plugins: {
          legend: { display: spec.series.length > 1, position: "bottom" },
          tooltip: {
            callbacks: { label: (item) => `${item.dataset.label}: ${format(item.parsed[valueAxis])}` },
          },
        },
      },
    };
  }

  // The numbers as a table: a row per label, a column per series (and their total when there are
  // several); each number cell carries its raw value and its series in data- attributes.
  function numbersTable(figure, spec, data, format) {
    const table = document.createElement("table");
    table.className = "chart-numbers striped";
    table.id = `${figure.id}-numbers`;
    const head = table.createTHead().insertRow();
    const corner = document.createElement("th");
    corner.scope = "col";
    corner.textContent = spec.label_heading || "";
    head.append(corner);
    const columns = data.datasets.map((dataset) => dataset.label);
    const withTotal = columns.length > 1;
    for (const name of withTotal ? [...columns, "Total"] : columns) {
      const th = document.createElement("th");
      th.scope = "col";
      th.className = "num";
      th.textContent = name;
      head.append(th);
    }
    const body = table.createTBody();
    data.labels.forEach((label, row) => {
      const tr = body.insertRow();
      tr.dataset.label = label;
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = label;
      tr.append(th);
      let total = 0;
      data.datasets.forEach((dataset) => {
        const value = Number(dataset.data[row]) || 0;
        total += value;
        const td = tr.insertCell();
        td.className = "num";
        td.dataset.series = dataset.label;
        td.dataset.value = String(value);
        td.textContent = format(value);
      });
      if (withTotal) {
        const td = tr.insertCell();
        td.className = "num";
        td.dataset.series = "Total";
        td.dataset.value = String(total);
        td.textContent = format(total);
      }
    });
    const details = document.createElement("details");
    details.className = "chart-details";
    const summary = document.createElement("summary");
    summary.textContent = "Show the numbers";
    const scroll = document.createElement("div");
    scroll.className = "table-scroll";
    scroll.append(table);
    details.append(summary, scroll);
    return details;
  }

  function draw(figure) {
    if (figure.dataset.chartState) return; // drawn already
    const source = figure.querySelector('script[type="application/json"]');
    const box = figure.querySelector(".chart-canvas");
    const canvas = box && box.querySelector("canvas");
    if (!source || !canvas) return;
    let spec;
    try {
      spec = JSON.parse(source.textContent);
    } catch (error) {
      figure.dataset.chartState = "broken";
      return;
    }
    const format = formatter(spec);
    if (spec.kind === "horizontal-bar") {
      // One bar a label, each tall enough to read (the CSSOM, not a style attribute: CSP).
      box.style.height = `${Math.max(8, 2.25 * spec.labels.length + 4)}rem`;
    }
    let data = { labels: spec.labels, datasets: spec.series.map((s) => ({ label: s.name, data: s.values })) };
    if (typeof window.Chart === "function") {
      // The page's own font and muted text colour for axes and legends.
      const page = getComputedStyle(figure);
      window.Chart.defaults.font.family = page.fontFamily;
      window.Chart.defaults.color = page.getPropertyValue("--pico-muted-color").trim() || "#555";
      const chart = new window.Chart(canvas, config(figure, spec, format));
      data = chart.data; // the table says what the chart was given to draw
      figure.dataset.chartState = "drawn";
    } else {
      box.hidden = true;
      figure.dataset.chartState = "table-only";
    }
    canvas.setAttribute("aria-describedby", `${figure.id}-numbers`);
    const numbers = numbersTable(figure, spec, data, format);
    numbers.open = figure.dataset.chartState === "table-only"; // without the picture, the numbers show
    figure.append(numbers);
  }

  // Draws every chart in `root` not drawn yet (pages that swap in new content call it again).
  function drawCharts(root) {
    (root || document).querySelectorAll("figure[data-chart]").forEach(draw);
  }

  window.OffsessionCharts = { drawCharts };
  document.addEventListener("DOMContentLoaded", () => drawCharts(document));
})();
