// A small line chart on a <canvas>, drawn by hand: rates over a sliding window of time, one
// line per series, a y axis that rounds its maximum up to a readable number, and the time axis
// in seconds or minutes before now. The time axis spans the points there are, from 10 s up to
// `window` seconds, so a page open for a few seconds already shows them. Colours come from CSS
// custom properties (`--series-<key>`), so the legend and the lines share them. It keeps at
// most `window` seconds of points.

/**
 * @typedef {object} Series
 * @property {string} key the name of the value in each point
 * @property {string} label shown in the legend
 */

/** A readable ceiling for the y axis: 1, 2 or 5 times a power of ten, at least 1. */
function niceCeiling(value) {
  if (!(value > 1)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) {
    if (value <= step * power) return step * power;
  }
  return 10 * power;
}

/** @param {number} n */
/** The shortest time axis, in ms. */
const MIN_SPAN = 10000;
/** Steps between time labels, in ms: the first that gives at most six labels is used. */
const LABEL_STEPS = [10000, 30000, 60000, 120000];

function shortNumber(n) {
  if (n >= 1e6) return `${+(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${+(n / 1e3).toFixed(1)}k`;
  return `${+n.toFixed(2)}`;
}

export class RateChart {
  /** @type {{at: number, values: Record<string, number>}[]} */
  #points = [];

  /**
   * @param {HTMLCanvasElement} canvas
   * @param {HTMLElement} legend a list the legend items are put in
   * @param {Series[]} series
   * @param {number} window seconds shown
   */
  constructor(canvas, legend, series, window) {
    this.canvas = canvas;
    this.series = series;
    this.window = window;
    for (const s of series) {
      const item = document.createElement('li');
      item.className = `series-${s.key}`;
      item.textContent = s.label;
      legend.append(item);
    }
    new ResizeObserver(() => this.draw()).observe(canvas);
  }

  /**
   * Adds a point and forgets those older than the window.
   * @param {number} at ms since the epoch
   * @param {Record<string, number>} values per series key
   */
  add(at, values) {
    this.#points.push({ at, values });
    const oldest = at - this.window * 1000;
    while (this.#points.length > 0 && this.#points[0].at < oldest) this.#points.shift();
    this.draw();
  }

  draw() {
    const { canvas } = this;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (width === 0 || height === 0) return;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const g = canvas.getContext('2d');
    if (!g) return;
    g.scale(ratio, ratio);
    const style = getComputedStyle(canvas);
    const ink = style.getPropertyValue('--ink').trim() || '#333';
    const grid = style.getPropertyValue('--line').trim() || '#ddd';
    g.font = `12px ${style.fontFamily}`;

    const left = 48;
    const right = 8;
    const top = 8;
    const bottom = 22;
    const plotWidth = width - left - right;
    const plotHeight = height - top - bottom;
    const points = this.#points;
    const now = points.length ? points[points.length - 1].at : Date.now();
    const first = points.length ? points[0].at : now;
    const span = Math.min(this.window * 1000, Math.max(MIN_SPAN, now - first));
    const start = now - span;
    let highest = 0;
    for (const p of this.#points) {
      for (const s of this.series) highest = Math.max(highest, p.values[s.key] ?? 0);
    }
    const ceiling = niceCeiling(highest);
    const x = (/** @type {number} */ at) => left + ((at - start) / span) * plotWidth;
    const y = (/** @type {number} */ v) => top + plotHeight - (v / ceiling) * plotHeight;

    g.strokeStyle = grid;
    g.fillStyle = ink;
    g.lineWidth = 1;
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    for (let i = 0; i <= 4; i++) {
      const v = (ceiling * i) / 4;
      g.beginPath();
      g.moveTo(left, Math.round(y(v)) + 0.5);
      g.lineTo(width - right, Math.round(y(v)) + 0.5);
      g.stroke();
      g.fillText(shortNumber(v), left - 6, y(v));
    }
    g.textBaseline = 'top';
    const step = LABEL_STEPS.find((s) => span / s <= 6) ?? LABEL_STEPS[LABEL_STEPS.length - 1];
    for (let back = 0; back <= span; back += step) {
      const label = back === 0 ? 'now' : step < 60000 ? `−${back / 1000} s` : `−${back / 60000} min`;
      // The labels at the ends stay inside the plot.
      g.textAlign = back === 0 ? 'right' : back + step > span && x(now - back) < left + 30 ? 'left' : 'center';
      g.fillText(label, x(now - back), top + plotHeight + 6);
    }

    g.lineWidth = 2;
    g.lineJoin = 'round';
    for (const s of this.series) {
      g.strokeStyle = style.getPropertyValue(`--series-${s.key}`).trim() || ink;
      g.beginPath();
      let started = false;
      for (const p of this.#points) {
        const px = x(p.at);
        const py = y(p.values[s.key] ?? 0);
        if (started) {
          g.lineTo(px, py);
        } else {
          g.moveTo(px, py);
          started = true;
        }
      }
      g.stroke();
    }
  }
}
