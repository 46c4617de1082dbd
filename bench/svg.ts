/** Minimal SVG charts for the benchmark report: no dependencies, readable output. */

const escape = (text: string): string => text.replace(/&/g, '&amp;').replace(/</g, '&lt;');

export interface Bar {
  label: string;
  value: number;
}

/** Horizontal bars with their values, in a box at (x, y). */
export function barChart(title: string, unit: string, bars: Bar[], x: number, y: number, width: number): { svg: string; height: number } {
  const max = Math.max(...bars.map((b) => b.value), 1);
  const rowHeight = 26;
  const labelWidth = 170;
  const parts = [`<text x="${x}" y="${y + 16}" font-weight="bold">${escape(title)}</text>`];
  bars.forEach((bar, i) => {
    const top = y + 28 + i * rowHeight;
    const length = ((width - labelWidth - 90) * bar.value) / max;
    parts.push(
      `<text x="${x}" y="${top + 15}">${escape(bar.label)}</text>`,
      `<rect x="${x + labelWidth}" y="${top + 3}" width="${length.toFixed(1)}" height="16" fill="${i === 0 ? '#2b6cb0' : '#90a4bf'}"/>`,
      `<text x="${(x + labelWidth + length + 6).toFixed(1)}" y="${top + 15}">${bar.value.toFixed(0)} ${escape(unit)}</text>`,
    );
  });
  return { svg: parts.join('\n'), height: 28 + bars.length * rowHeight + 12 };
}

export interface Series {
  label: string;
  color: string;
  points: Array<[number, number]>;
}

/** Lines over time (x in ms) in a box at (x, y). */
export function lineChart(title: string, xUnit: string, series: Series[], x: number, y: number, width: number, height: number): string {
  const all = series.flatMap((s) => s.points);
  const maxX = Math.max(...all.map(([px]) => px), 1);
  const maxY = Math.max(...all.map(([, py]) => py), 1);
  const left = x + 50;
  const top = y + 28;
  const plotWidth = width - 70;
  const plotHeight = height - 60;
  const sx = (v: number): string => (left + (plotWidth * v) / maxX).toFixed(1);
  const sy = (v: number): string => (top + plotHeight - (plotHeight * v) / maxY).toFixed(1);
  const parts = [
    `<text x="${x}" y="${y + 16}" font-weight="bold">${escape(title)}</text>`,
    `<line x1="${left}" y1="${top + plotHeight}" x2="${left + plotWidth}" y2="${top + plotHeight}" stroke="#444"/>`,
    `<line x1="${left}" y1="${top}" x2="${left}" y2="${top + plotHeight}" stroke="#444"/>`,
    `<text x="${left - 6}" y="${top + 10}" text-anchor="end">${maxY.toFixed(0)}</text>`,
    `<text x="${left - 6}" y="${top + plotHeight}" text-anchor="end">0</text>`,
    `<text x="${left + plotWidth}" y="${top + plotHeight + 16}" text-anchor="end">${maxX.toFixed(0)} ${escape(xUnit)}</text>`,
  ];
  series.forEach((s, i) => {
    parts.push(
      `<polyline fill="none" stroke="${s.color}" stroke-width="2" points="${s.points.map(([px, py]) => `${sx(px)},${sy(py)}`).join(' ')}"/>`,
      `<text x="${left + 10 + i * 150}" y="${top + plotHeight + 34}" fill="${s.color}">— ${escape(s.label)}</text>`,
    );
  });
  return parts.join('\n');
}

export function document(width: number, height: number, body: string): string {
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="13">\n<rect width="100%" height="100%" fill="white"/>\n${body}\n</svg>\n`;
}
