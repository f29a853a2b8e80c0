// mmtrace --serve dashboard. Plain JS, no build step. Loads /api/snapshot,
// then follows /events (the `mmtrace --json` records as Server-Sent Events).
// Record data (paths, command names) only ever reaches the page through
// textContent or attributes, never innerHTML.
'use strict';

const MiB = 1048576;
const HISTORY_MAX = 3600;
// One colour per eviction reason, everywhere (charts, table bars, legends).
const REASONS = {
  memcg_reclaim: ['#d62728', 'the cgroup hit its memory limit (or memory.high)'],
  direct_reclaim: ['#ff7f0e', 'an allocating task stalled to reclaim (host short of memory)'],
  kswapd: ['#9467bd', 'host-wide background reclaim'],
  proactive: ['#17becf', 'memory.reclaim or a lowered limit was written: no shortage'],
  damon: ['#2ca02c', 'DAMON proactive reclaim (kdamond)'],
  other_reclaim: ['#8c564b', 'reclaim by another task (see "reclaimers")'],
  khugepaged: ['#bcbd22', 'khugepaged collapsing huge pages'],
  compaction: ['#7f7f7f', 'memory compaction (kcompactd)'],
  fadvise: ['#1f77b4', 'a program asked: fadvise/madvise DONTNEED'],
  truncate: ['#e377c2', 'the file was truncated'],
  unlink: ['#393b79', 'the file was deleted'],
  drop_caches: ['#637939', 'drop_caches or a direct-I/O write'],
  other: ['#aaaaaa', 'other invalidation'],
};
const VERDICT = {
  cache_only: 'page cache', anonymous_growth: 'anonymous growth', mixed: 'anonymous + cache',
  oom_killed: 'OOM killed', dirty_or_shmem: 'dirty / shmem', no_growth: 'no growth',
};

const S = { evkeys: new Set(), meta: null, latest: null, summary: null, verdicts: [], ooms: [], events: [], hist: null,
  clients: null, ended: false, sort: {}, selected: null, lastSeq: 0 };
window.__mmtrace = S; // for tests: lastSeq, latest

const $ = (id) => document.getElementById(id);
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null) continue;
    if (k === 'class') e.className = v; else if (k === 'text') e.textContent = v;
    else if (k === 'style') e.style.cssText = v; // CSSOM, allowed under a strict CSP
    else e.setAttribute(k, v);
  }
  for (const k of kids) if (k != null) e.append(k); // strings become text nodes
  return e;
}
const sum = (xs, f) => xs.reduce((a, x) => a + (f(x) || 0), 0);
const ps = () => (S.meta && S.meta.page_size) || 4096;

// ---------- formatting ----------
function count(n) {
  if (n == null) return '–';
  const a = Math.abs(n);
  if (a < 1e6) return Math.round(n).toLocaleString('en-US');
  for (const [d, u] of [[1e12, 'T'], [1e9, 'G'], [1e6, 'M']]) if (a >= d) return (n / d).toFixed(1) + u;
}
const mibPages = (p) => (p == null ? '–' : ((p * ps()) / MiB).toFixed(1));
const mib = (b) => (b == null ? '–' : (b / MiB).toFixed(1) + ' MiB');
function dur(s) {
  if (s == null) return '–';
  if (s < 120) return s.toFixed(1) + ' s';
  const m = Math.floor(s / 60);
  return m < 120 ? `${m} min ${Math.floor(s % 60)} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}
// Names as the terminal shows them (output/escape.rs): controls, invisible
// reordering characters and the backslash escaped; bytes that are not UTF-8
// (path_bytes_hex) as \xHH.
function escChar(c) {
  const n = c.codePointAt(0);
  if (c === '\\') return '\\\\';
  if (c === '\n') return '\\n';
  if (c === '\t') return '\\t';
  if (c === '\r') return '\\r';
  if (n < 0x20 || n === 0x7f) return '\\x' + n.toString(16).padStart(2, '0');
  if ((n >= 0x80 && n <= 0x9f) || (n >= 0x200b && n <= 0x200f) || (n >= 0x2028 && n <= 0x202e) ||
      (n >= 0x2060 && n <= 0x2069) || n === 0xfeff) return `\\u{${n.toString(16)}}`;
  return c;
}
function displayName(text, hex) {
  if (!hex) return Array.from(text || '', escChar).join('');
  const b = hex.match(/../g).map((h) => parseInt(h, 16));
  let out = '';
  for (let i = 0; i < b.length;) {
    const x = b[i];
    const len = x < 0x80 ? 1 : x >= 0xc2 && x < 0xe0 ? 2 : x >= 0xe0 && x < 0xf0 ? 3 : x >= 0xf0 && x < 0xf5 ? 4 : 0;
    let ok = len > 0 && i + len <= b.length;
    for (let k = 1; ok && k < len; k++) ok = (b[i + k] & 0xc0) === 0x80;
    let s = null;
    if (ok) try { s = new TextDecoder('utf-8', { fatal: true }).decode(new Uint8Array(b.slice(i, i + len))); } catch (e) { s = null; }
    if (s === null) { out += '\\x' + x.toString(16).padStart(2, '0'); i += 1; } else { out += escChar(s); i += len; }
  }
  return out;
}

// ---------- history (columnar, cumulative; the server's shape) ----------
const HKEYS = ['elapsed_s', 'minor_faults', 'major_faults', 'write_faults', 'pages_added', 'pages_evicted',
  'refault_pages', 'cgroup_usage_bytes', 'cgroup_limit_bytes', 'cgroup_file_bytes', 'cgroup_anon_bytes',
  'psi_some_total_us', 'psi_full_total_us', 'events_dropped'];
function emptyHistory() { const h = { evicted_by: {} }; for (const k of HKEYS) h[k] = []; return h; }
function pushHistory(r) {
  const h = S.hist;
  const xs = h.elapsed_s;
  if (xs.length && r.elapsed_s <= xs[xs.length - 1]) return;
  const mem = (r.cgroup && r.cgroup.memory) || {};
  const psi = mem.psi || {};
  const f = r.files || [], p = r.processes || [];
  const v = { elapsed_s: r.elapsed_s, minor_faults: sum(p, (x) => x.minor_faults),
    major_faults: sum(p, (x) => x.major_faults), write_faults: sum(p, (x) => x.write_faults),
    pages_added: sum(f, (x) => x.pages_added), pages_evicted: sum(f, (x) => x.pages_evicted),
    refault_pages: sum(f, (x) => x.refault_pages), cgroup_usage_bytes: mem.usage_bytes,
    cgroup_limit_bytes: mem.limit_bytes, cgroup_file_bytes: mem.file_bytes, cgroup_anon_bytes: mem.anon_bytes,
    psi_some_total_us: psi.some_total_us, psi_full_total_us: psi.full_total_us, events_dropped: r.events_dropped };
  const n = xs.length;
  for (const k of HKEYS) h[k].push(v[k] == null ? null : v[k]);
  const reasons = new Set([...Object.keys(h.evicted_by), ...f.flatMap((x) => Object.keys(x.evicted_by || {}))]);
  for (const k of reasons) {
    const col = h.evicted_by[k] || (h.evicted_by[k] = new Array(n).fill(null));
    col.push(sum(f, (x) => (x.evicted_by || {})[k]));
  }
  if (xs.length > HISTORY_MAX) for (const col of [...HKEYS.map((k) => h[k]), ...Object.values(h.evicted_by)]) col.shift();
}
// Per-second rate of a cumulative column: Δvalue/Δelapsed_s (null at the
// start, across unknowns, and where a counter went backwards).
function rate(col, scale) {
  const xs = S.hist.elapsed_s;
  return col.map((v, i) => {
    if (i === 0 || v == null || col[i - 1] == null) return null;
    const dt = xs[i] - xs[i - 1], d = v - col[i - 1];
    return dt > 0 && d >= 0 ? (d / dt) * scale : null;
  });
}
const level = (col, scale) => col.map((v) => (v == null ? null : v * scale));

// ---------- charts ----------
const CHARTS = [
  { id: 'memory', grid: 'g-memory', title: 'Cgroup memory vs limit', unit: 'MiB',
    expl: 'What the kernel charges to the cgroup. File is page cache it can take back; anon is heap/stack it cannot (without swap). Anon rising toward the limit is the leak signal.',
    src: 'memory.current, memory.stat file/anon, memory.max (v1: usage_in_bytes, total_cache/total_rss, limit_in_bytes)', needsCgroup: true,
    series: () => [
      ['usage', '#1d2330', level(S.hist.cgroup_usage_bytes, 1 / MiB)],
      ['file (page cache)', '#1f77b4', level(S.hist.cgroup_file_bytes, 1 / MiB)],
      ['anon', '#d62728', level(S.hist.cgroup_anon_bytes, 1 / MiB)],
      ['limit', '#555', level(S.hist.cgroup_limit_bytes, 1 / MiB), [6, 4]]] },
  { id: 'psi', grid: 'g-memory', title: 'Memory pressure', unit: '% of time',
    expl: 'Share of time tasks waited for memory (PSI). Some: at least one task stalled; full: all of them.',
    src: 'memory.pressure some/full total', needsCgroup: true,
    srcNow: () => { const m = (S.summary || S.latest || {}).cgroup; const sc = m && m.memory && m.memory.psi_scope;
      return sc === 'system' ? '/proc/pressure/memory: the whole host (the cgroup has no memory.pressure, e.g. cgroup v1)' : null; },
    series: () => [['some', '#ef6c00', rate(S.hist.psi_some_total_us, 1e-4)],
      ['full', '#c62828', rate(S.hist.psi_full_total_us, 1e-4)]] },
  { id: 'cache', grid: 'g-cache', title: 'Page cache in / out', unit: 'MiB/s',
    expl: 'Pages of the traced files read into the page cache (in) and removed from it (out), by anyone.',
    src: 'Σ files[].pages_added, pages_evicted',
    series: () => [['added', '#1f77b4', rate(S.hist.pages_added, ps() / MiB)],
      ['evicted', '#d62728', rate(S.hist.pages_evicted, ps() / MiB)]] },
  { id: 'evict', grid: 'g-cache', title: 'Evictions by reason', unit: 'MiB/s',
    expl: 'Who removed the pages: one line per reason seen (reasons still at zero are hidden), dashed total.',
    src: 'Σ files[].evicted_by', reasons: true,
    series: () => [...Object.keys(REASONS).filter((k) => { const c = S.hist.evicted_by[k]; return c && c.some((v) => v > 0); })
      .map((k) => [k, REASONS[k][0], rate(S.hist.evicted_by[k], ps() / MiB)]),
    ['total', '#333', rate(S.hist.pages_evicted, ps() / MiB), [5, 4]]] },
  { id: 'refault', grid: 'g-faults', title: 'Refaults', unit: 'MiB/s',
    expl: 'Pages read back soon after reclaim evicted them: the working set does not fit. mmtrace\'s per-file estimate.',
    src: 'Σ files[].refault_pages',
    series: () => [['refaults', '#6a1b9a', rate(S.hist.refault_pages, ps() / MiB)]] },
  { id: 'faults', grid: 'g-faults', title: 'Page faults', unit: 'faults/s (minor left, major right)',
    expl: 'Minor: the page was already in memory, mapped in microseconds. Major: the process waited for the disk.',
    src: 'Σ processes[].minor_faults, major_faults', twoAxes: true,
    series: () => [['minor', '#1f77b4', rate(S.hist.minor_faults, 1)], ['major', '#d62728', rate(S.hist.major_faults, 1)]] },
];
const plots = {};
const fmtNum = (v) => (v == null ? '–' : v === 0 ? '0' : v >= 100 ? v.toFixed(0) : v >= 1 ? v.toFixed(1) : v.toFixed(3));
function drawOoms(u) { // a red line at each OOM kill
  const { ctx, bbox } = u;
  ctx.save(); ctx.setLineDash([]); ctx.strokeStyle = '#c62828'; ctx.lineWidth = 2 * devicePixelRatio;
  for (const o of S.ooms) {
    const x = u.valToPos(o.elapsed_s, 'x', true);
    if (x >= bbox.left && x <= bbox.left + bbox.width) { ctx.beginPath(); ctx.moveTo(x, bbox.top); ctx.lineTo(x, bbox.top + bbox.height); ctx.stroke(); }
  }
  ctx.restore();
}
const zeroBased = (_, a, b) => [0, b > 0 ? b * 1.08 : 1];
// Away from the cursor, the legend shows the latest values.
function latestInLegend(u) {
  const n = u.data[0].length, away = u.cursor.left == null || u.cursor.left < 0;
  if (away && n && u.legend.idx !== n - 1) u.setLegend({ idx: n - 1 });
}
function buildCards() {
  for (const c of CHARTS) {
    c.plotEl = el('div', { class: 'plot' });
    c.noteEl = el('p', { class: 'note', hidden: '' });
    c.legendEl = c.reasons ? el('div', { class: 'legend' }) : null;
    $(c.grid).append(el('section', { class: 'card', id: 'chart-' + c.id },
      el('h3', {}, c.title, el('span', { class: 'unit', text: c.unit })), el('p', { class: 'expl', text: c.expl }),
      c.noteEl, c.plotEl, c.legendEl, c.srcEl = el('p', { class: 'src', text: 'source: ' + c.src })));
  }
}
function renderCharts() {
  const hasCgroup = S.hist.cgroup_usage_bytes.some((v) => v != null);
  for (const c of CHARTS) {
    const ser = c.series();
    const data = [S.hist.elapsed_s, ...ser.map((s) => s[2])];
    const off = c.needsCgroup && !hasCgroup;
    if (c.srcNow) c.srcEl.textContent = 'source: ' + (c.srcNow() || c.src);
    c.noteEl.hidden = !off && S.hist.elapsed_s.length > 1;
    const scope = (S.meta && S.meta.scope) || {};
    c.noteEl.textContent = off ? (scope.cgroup || scope.all
      ? `No memory sample of the ${scope.all ? "host's root" : 'traced'} cgroup could be read (no memory accounting there), so this chart stays empty.`
      : 'No cgroup is traced: this chart needs --cgroup PATH (a command can run inside it: --cgroup PATH -- CMD). The per-process RSS is in the process table below.')
      : 'Waiting for two intervals to draw rates…';
    c.plotEl.hidden = off;
    if (off) continue;
    const sig = ser.map((s) => s[0]).join('|');
    const width = Math.max(300, c.plotEl.clientWidth || 560);
    let u = plots[c.id];
    if (u && u.sig !== sig) { u.destroy(); u = null; }
    if (!u) {
      const axes = [{ label: 'seconds since start', size: 36, labelSize: 16 },
        { size: 56, values: (_, vs) => vs.map(fmtNum), scale: 'y' }];
      if (c.twoAxes) axes.push({ side: 1, size: 56, scale: 'y2', grid: { show: false }, values: (_, vs) => vs.map(fmtNum), stroke: '#d62728' });
      u = new uPlot({ width, height: 200, cursor: { sync: { key: 'mmtrace' } }, scales: { x: { time: false }, y: { range: zeroBased }, y2: { range: zeroBased } },
        axes, hooks: { draw: [drawOoms], setLegend: [latestInLegend] },
        series: [{ label: 'time', value: (_, v) => (v == null ? '–' : v.toFixed(1) + ' s') },
          ...ser.map(([label, color, , dash], i) => ({ label, stroke: color, width: 1.6, dash, spanGaps: false,
            scale: c.twoAxes && i === 1 ? 'y2' : 'y', value: (_, v) => fmtNum(v) }))] }, data, c.plotEl);
      u.sig = sig;
      plots[c.id] = u;
    } else u.setData(data);
    latestInLegend(u);
    if (c.legendEl) c.legendEl.replaceChildren(...ser.filter((s) => REASONS[s[0]]).map((s) =>
      el('span', {}, el('span', { class: 'sw', style: 'background:' + REASONS[s[0]][0] }), s[0] + ': ' + REASONS[s[0]][1])));
  }
}
window.addEventListener('resize', () => { for (const c of CHARTS) if (plots[c.id]) plots[c.id].setSize({ width: Math.max(300, c.plotEl.clientWidth), height: 200 }); });

// ---------- header and banners ----------
function scopeText(m) {
  const s = m.scope || {};
  if (s.all) return 'every process on the host (--all)';
  const parts = [];
  if (s.command) parts.push('command: ' + s.command.join(' '));
  if (s.pids && s.pids.length) parts.push('pid ' + s.pids.join(', '));
  if (s.cgroup) parts.push('cgroup ' + s.cgroup);
  return displayName(parts.join('; ') || '–');
}
function setStatus(kind, text) { const p = $('status'); p.className = 'pill ' + kind; p.textContent = text; }
function renderHeader() {
  const m = S.meta; if (!m) return;
  const r = S.summary || S.latest;
  $('facts').replaceChildren(...[['scope', scopeText(m)], ['kernel', m.kernel], ['mmtrace', m.mmtrace_version],
    ['page size', m.page_size + ' B'], ['elapsed', dur(r ? r.elapsed_s : 0)]]
    .map(([k, v]) => el('div', {}, el('dt', { text: k }), el('dd', { text: v }))));
  if (S.summary) setStatus('ended', 'ended: ' + S.summary.end_reason.replace(/_/g, ' '));
}
function renderBanners() {
  const out = [];
  for (const o of S.ooms) {
    const big = o.anon_rss_bytes >= o.file_rss_bytes + o.shmem_rss_bytes;
    out.push(el('div', { class: 'banner oom' }, el('span', { class: 'badge', text: 'OOM kill' }),
      `at ${o.elapsed_s.toFixed(1)} s the kernel's OOM killer ended ${displayName(o.comm)} (pid ${o.pid})` +
      (o.cgroup ? ' in ' + displayName(o.cgroup) : '') + `: anon ${mib(o.anon_rss_bytes)}, file ${mib(o.file_rss_bytes)}, shmem ${mib(o.shmem_rss_bytes)} at the kill` +
      (big ? ' — anonymous memory dominated (a leak, not page cache).' : '.')));
  }
  const vs = [...S.verdicts].sort((a, b) => (a.scope === 'process') - (b.scope === 'process'));
  for (const v of vs) {
    const who = v.scope === 'process' ? `process ${v.pid}` : v.scope === 'host' ? 'host' : 'cgroup ' + displayName(v.cgroup || '');
    out.push(el('div', { class: 'banner' }, el('span', { class: 'badge ' + v.kind, text: VERDICT[v.kind] || v.kind }),
      v.thrashing ? el('span', { class: 'badge thrashing', text: 'thrashing' }) : null, `${who}: ${v.message}`));
  }
  if (!vs.length && !S.ended) out.push(el('div', { class: 'banner' }, el('span', { class: 'badge pending', text: 'verdict' }),
    'The verdict (leak or cache?) comes when the trace ends; until then, watch anon vs file below.'));
  $('banners').replaceChildren(...out);
}

// ---------- tables ----------
function sortable(table, cols, rows, rowEl, limit = 1000) {
  const s = S.sort[table.id] || (S.sort[table.id] = { key: null, asc: false });
  if (s.key) {
    const c = cols.find((x) => x.key === s.key);
    rows = [...rows].sort((a, b) => {
      const x = c.get(a), y = c.get(b);
      const d = typeof x === 'string' || typeof y === 'string' ? String(x).localeCompare(String(y)) : (x ?? -1) - (y ?? -1);
      return s.asc ? d : -d;
    });
  }
  const head = el('tr', {}, ...cols.map((c) => {
    const th = el('th', { class: (c.name ? 'name ' : '') + (s.key === c.key ? 'sorted' + (s.asc ? ' asc' : '') : ''), title: c.tip, text: c.label });
    th.addEventListener('click', () => { s.asc = s.key === c.key ? !s.asc : !!c.name; s.key = c.key; renderTables(); });
    return th;
  }));
  table.replaceChildren(el('thead', {}, head), el('tbody', {}, ...rows.slice(0, limit).map(rowEl)));
}
const FILE_COLS = [
  { key: 'path', label: 'File', name: true, tip: 'Path at report time; ? = never seen, (deleted) = no longer has this name', get: (f) => f.path },
  { key: 'minor_faults', label: 'Minor faults', tip: 'MINFLT: faults served from memory' },
  { key: 'major_faults', label: 'Major faults', tip: 'MAJFLT: faults that waited for the disk' },
  { key: 'write_faults', label: 'Write', tip: 'faults on a write access', w: true },
  { key: 'cow_faults', label: 'CoW', tip: 'copy-on-write faults (private write to a file)', w: true },
  { key: 'pages_mapped', label: 'Mapped', tip: 'pages mapped by those faults, fault-around included' },
  { key: 'pages_added', label: 'Added', tip: 'pages added to the page cache', cache: true },
  { key: 'pages_evicted', label: 'Evicted', tip: 'pages removed from the page cache (bar: by reason)', cache: true },
  { key: 'refault_pages', label: 'Refaults~', tip: 'pages re-added after a reclaim this trace saw (estimate)', cache: true },
  { key: 'resident_pages', label: 'Resident MiB', tip: 'in the page cache now', fmt: mibPages },
  { key: 'resident_pct', label: '% of file', tip: 'resident / file size', get: (f) => (f.file_pages ? (100 * (f.resident_pages || 0)) / f.file_pages : null), fmt: (v) => (v == null ? '–' : v.toFixed(0) + ' %') },
];
for (const c of FILE_COLS) c.get = c.get || ((f) => f[c.key]);
function fileRow(f) {
  const wf = !S.meta || S.meta.features.write_faults;
  const tr = el('tr', { 'data-testid': 'file-row', 'data-path': f.path, 'data-kind': f.kind });
  if (f.kind === 'file' && f.dev != null) {
    tr.setAttribute('data-dev', f.dev); tr.setAttribute('data-ino', String(f.ino));
    if (S.selected && S.selected.dev === f.dev && S.selected.ino === f.ino) tr.className = 'selected';
    tr.addEventListener('click', () => selectFile(f));
  }
  for (const c of FILE_COLS) {
    const v = c.get(f);
    const td = el('td', { 'data-col': c.key, class: c.name ? 'name' : '' });
    if (c.name) {
      const name = displayName(f.path, f.path_bytes_hex);
      td.append((f.path_known ? '' : '?') + name, f.deleted ? el('span', { class: 'dim', text: ' (deleted)' }) : '');
      td.title = name;
    } else if ((c.cache && f.kind !== 'file') || (c.w && !wf)) { td.textContent = '–'; td.className = 'dim'; } else td.textContent = (c.fmt || count)(v);
    if (c.key === 'pages_evicted' && f.pages_evicted > 0) {
      const by = Object.entries(f.evicted_by || {}).filter(([, n]) => n > 0);
      td.append(el('div', { class: 'bar' }, ...by.map(([k, n]) => el('span', { style: `width:${(100 * n) / f.pages_evicted}%;background:${(REASONS[k] || REASONS.other)[0]}` }))));
      td.title = by.map(([k, n]) => `${k} ${count(n)}`).join(', ');
    }
    tr.append(td);
  }
  return tr;
}
const PROC_COLS = [
  { key: 'pid', label: 'PID', fmt: (v) => (v ? String(v) : '–'), tip: '– : a row summing several processes (others, or exited ones folded away)' },
  { key: 'comm', label: 'Command', name: true, tip: 'command name; (target) = named by you, not a child' },
  { key: 'minor_faults', label: 'Minor faults', tip: 'traced' },
  { key: 'kernel_minor_faults', label: 'Kernel minor', tip: "the kernel's own count (/proc/<pid>/stat)" },
  { key: 'major_faults', label: 'Major faults', tip: 'traced' },
  { key: 'kernel_major_faults', label: 'Kernel major', tip: "the kernel's own count" },
  { key: 'untraced', label: 'Untraced', tip: 'kernel − traced: GUP faults (O_DIRECT, pinning, execve)', get: (p) => (p.untraced_minor_faults == null || p.untraced_major_faults == null ? null : p.untraced_minor_faults + p.untraced_major_faults) },
  { key: 'rss_file_pages', label: 'RSS file MiB', tip: 'RssFile: file pages mapped (reclaimable if clean)', fmt: mibPages },
  { key: 'rss_anon_pages', label: 'RSS anon MiB', tip: 'RssAnon: private memory', fmt: mibPages },
];
for (const c of PROC_COLS) c.get = c.get || ((p) => p[c.key]);
function procRow(p) {
  return el('tr', { 'data-testid': 'process-row', 'data-pid': String(p.pid) }, ...PROC_COLS.map((c) => {
    if (c.name) return el('td', { class: 'name', 'data-col': c.key }, displayName(p.comm || '?'),
      el('span', { class: 'dim', text: (p.target ? ' (target)' : '') + (p.alive ? '' : ' (exited)') }));
    return el('td', { 'data-col': c.key, text: (c.fmt || count)(c.get(p)) });
  }));
}
function renderTables() {
  const r = S.summary || S.latest;
  const files = (r && r.files) || [], procs = (r && r.processes) || [];
  const nf = S.showAll ? 1000 : 40, np = S.showAll ? 1000 : 40;
  sortable($('files'), FILE_COLS, files, fileRow, nf);
  sortable($('procs'), PROC_COLS, procs, procRow, np);
  const more = Math.max(0, files.length - nf) + Math.max(0, procs.length - np);
  $('files-note').textContent = !r ? 'Waiting for the first interval…' : files.length ? '' : 'No file touched yet.';
  $('more').hidden = !more && !S.showAll;
  $('more').textContent = S.showAll ? 'Show only the first 40 rows of each table' : `Show all rows (${more} more)`;
  const cgs = (r && r.cgroups) || [];
  $('cgroups-part').hidden = !cgs.length;
  if (cgs.length) sortable($('cgroups'), CG_COLS, cgs, (c) => el('tr', { 'data-testid': 'cgroup-row' }, ...CG_COLS.map((k) =>
    el('td', { 'data-col': k.key, class: k.name ? 'name' : '', text: k.name ? displayName(c.cgroup) : (k.fmt || count)(k.get(c)) }))));
}
const CG_COLS = [
  { key: 'cgroup', label: 'Cgroup', name: true, tip: 'memory cgroup path' },
  { key: 'processes', label: 'Processes', tip: 'seen in it' }, { key: 'alive', label: 'Alive' },
  { key: 'minor_faults', label: 'Minor faults' }, { key: 'major_faults', label: 'Major faults' },
  { key: 'rss_file_pages', label: 'RSS file MiB', fmt: mibPages }, { key: 'rss_anon_pages', label: 'RSS anon MiB', fmt: mibPages },
];
for (const c of CG_COLS) c.get = (x) => x[c.key];

// ---------- health ----------
function kv(pairs) { return el('dl', { class: 'kv' }, ...pairs.flatMap(([k, v]) => [el('dt', { text: k }), el('dd', { text: v })])); }
function renderHealth() {
  const r = S.summary || S.latest || {};
  const cards = [];
  const evOn = S.meta && S.meta.scope && S.meta.scope.events && S.meta.scope.events.length;
  cards.push(el('section', { class: 'card' }, el('h3', { text: 'Counting' }),
    el('p', { class: 'expl', text: 'Whether mmtrace itself kept up. Non-zero values mean some numbers are lower than the truth.' }),
    kv([['lost faults', count(r.lost_faults) + ' (faults with no room in the per-mapping map)'],
      ['raw events dropped', evOn ? count(r.events_dropped) + ' (ring buffer full: narrow the scope, --sample N or --events-buffer)' : 'raw events off (--events)'],
      ['dashboard clients', S.clients == null ? '–' : String(S.clients)],
      ...(r.errors || []).map((e) => [`${e.name} ×${count(e.count)}`, e.meaning])])));
  const bpf = S.summary && S.summary.bpf_stats;
  cards.push(el('section', { class: 'card' }, el('h3', {}, 'BPF run time', el('span', { class: 'unit', text: 'per program' })),
    el('p', { class: 'expl', text: 'Cost of the eBPF programs in the kernel (from the final summary).' }),
    bpf ? el('table', { class: 'data' }, el('tr', {}, ...['program', 'runs', 'ns per run', 'total ms'].map((t) => el('th', { text: t }))),
      ...bpf.map((b) => el('tr', {}, el('td', { class: 'name', text: b.program }), el('td', { text: count(b.run_count) }),
        el('td', { text: b.ns_per_run == null ? '–' : b.ns_per_run.toFixed(0) }), el('td', { text: (b.run_time_ns / 1e6).toFixed(1) }))))
      : el('p', { class: 'note', text: S.summary ? 'Not measured: run with --bpf-stats.' : 'Shown when the trace ends (with --bpf-stats).' })));
  if (evOn) {
    cards.push(el('section', { class: 'card wide' }, el('h3', {}, 'Latest raw events', el('span', { class: 'unit', text: `${S.events.length} kept` })),
      el('p', { class: 'expl', text: 'The newest single events (--events): faults, cache adds, evictions.' }),
      el('table', { class: 'data' }, el('tr', {}, ...['t (s)', 'kind', 'command', 'file', 'page', 'pages', 'reason'].map((t) => el('th', { text: t, class: t === 'command' || t === 'file' ? 'name' : '' }))),
        ...S.events.slice(-12).reverse().map((e) => el('tr', {}, el('td', { text: e.time_s.toFixed(3) }), el('td', { text: e.kind }),
          el('td', { class: 'name', text: displayName(e.comm || '') }), el('td', { class: 'name', text: e.path == null ? '–' : displayName(e.path, e.path_bytes_hex) }),
          el('td', { text: count(e.offset_pages) }), el('td', { text: count(e.pages) }), el('td', { text: e.reason || '' }))))));
  }
  $('health').replaceChildren(...cards);
}

// ---------- page map ----------
let pmTimer = null, pmData = null;
function selectFile(f) {
  S.selected = { dev: f.dev, ino: f.ino, path: f.path, name: displayName(f.path, f.path_bytes_hex) };
  renderTables();
  clearInterval(pmTimer);
  fetchPagemap();
  pmTimer = setInterval(fetchPagemap, 3000);
}
async function fetchPagemap() {
  const sel = S.selected;
  try {
    let res = await fetch(`/api/pagemap?dev=${encodeURIComponent(sel.dev)}&ino=${sel.ino}`);
    // Servers that read dev as /proc/<pid>/maps hex miss a decimal dev: ask by path.
    if (res.status === 404 && sel.path) res = await fetch('/api/pagemap?path=' + encodeURIComponent(sel.path));
    if (sel !== S.selected) return;
    if (res.status === 404) { pmData = null; $('pm-note').textContent = `${sel.name}: not in the trace (any more).`; drawPagemap(); return; }
    if (!res.ok) throw new Error(((await res.json().catch(() => ({}))).error) || 'HTTP ' + res.status);
    pmData = await res.json();
    drawPagemap();
  } catch (e) { $('pm-note').textContent = 'Page map unavailable: ' + e.message; }
  if (S.ended && pmTimer) { clearInterval(pmTimer); pmTimer = null; }
}
const FAULT_RGB = [239, 108, 0], EVICT_RGB = [198, 40, 40];
function shade(rgb, a) { return `rgba(${rgb[0]},${rgb[1]},${rgb[2]},${a})`; }
function residentColor(fr) { // pale (not cached) → dark blue (all cached)
  const lo = [232, 238, 246], hi = [21, 67, 140];
  return `rgb(${lo.map((l, i) => Math.round(l + (hi[i] - l) * fr)).join(',')})`;
}
function drawPagemap() {
  const cv = $('pm-canvas'), d = pmData;
  cv.hidden = !d; $('pm-legend').hidden = !d;
  if (!d) return;
  const marks = d.bands.some((b) => b.faults != null);
  $('pm-title').replaceChildren('Page map: ' + displayName(d.path), el('span', { class: 'unit', text: 'pages of one file' }));
  $('pm-note').textContent = `${count(d.pages)} pages (${mib(d.size_bytes)}), ${count(d.resident_pages)} resident (${d.pages ? ((100 * d.resident_pages) / d.pages).toFixed(0) : 0} %); ${d.bands.length} bands of ~${count(Math.ceil(d.pages / Math.max(1, d.bands.length)))} pages. Refreshed every 3 s.` +
    (marks ? '' : ' Fault and eviction marks need raw events (--events faults,evictions).');
  const W = cv.clientWidth || 1200, H = 120, dpr = devicePixelRatio || 1;
  cv.width = W * dpr; cv.height = H * dpr;
  const g = cv.getContext('2d');
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, W, H);
  const maxF = Math.max(1, ...d.bands.map((b) => b.faults || 0)), maxE = Math.max(1, ...d.bands.map((b) => b.evictions || 0));
  const x = (p) => (p / Math.max(1, d.pages)) * W;
  for (const b of d.bands) {
    const x0 = x(b.start_page), w = Math.max(1, x(b.end_page) - x0), n = Math.max(1, b.end_page - b.start_page);
    g.fillStyle = residentColor(b.resident_pages / n); g.fillRect(x0, 22, w, 60);
    if (b.faults) { g.fillStyle = shade(FAULT_RGB, 0.15 + (0.85 * b.faults) / maxF); g.fillRect(x0, 4, w, 14); }
    if (b.evictions) { g.fillStyle = shade(EVICT_RGB, 0.15 + (0.85 * b.evictions) / maxE); g.fillRect(x0, 86, w, 14); }
  }
  g.fillStyle = '#5b6475'; g.font = '11px system-ui, sans-serif';
  g.textAlign = 'left'; g.fillText('page 0', 2, 114);
  g.textAlign = 'right'; g.fillText(`page ${count(d.pages)} (${mib(d.size_bytes)})`, W - 2, 114);
  $('pm-legend').replaceChildren(...[['resident (darker = more of the band in memory)', residentColor(1)], ['not resident', residentColor(0)],
    ...(marks ? [['faults (top strip; darker = more)', shade(FAULT_RGB, 1)], ['evictions (bottom strip)', shade(EVICT_RGB, 1)]] : [])]
    .map(([t, c]) => el('span', {}, el('span', { class: 'sw', style: 'background:' + c }), t)));
}
$('more').addEventListener('click', () => { S.showAll = !S.showAll; renderTables(); });
$('pm-canvas').addEventListener('mousemove', (ev) => {
  if (!pmData) return;
  const r = ev.target.getBoundingClientRect(), p = ((ev.clientX - r.left) / r.width) * pmData.pages;
  const b = pmData.bands.find((x) => p >= x.start_page && p < x.end_page);
  $('pm-hover').textContent = b ? `pages ${count(b.start_page)}–${count(b.end_page - 1)}: ${count(b.resident_pages)} of ${count(b.end_page - b.start_page)} resident` +
    (b.faults == null ? '' : `, ${count(b.faults)} faults, ${count(b.evictions)} evictions`) : '';
});

// ---------- state and streaming ----------
let pending = false, evTimer = null;
function schedule() { if (!pending) { pending = true; setTimeout(render, 60); } }
function render() {
  pending = false;
  renderHeader(); renderBanners(); renderCharts(); renderTables(); renderHealth();
}
const ookey = (o) => `${o.pid}|${o.elapsed_s}`;
const evkey = (e) => `${e.time_s}|${e.tid}|${e.kind}|${e.offset_pages}`;
function onRecord(r) {
  switch (r.type) {
    case 'meta': S.meta = r; break;
    case 'interval':
      if (S.latest && r.elapsed_s < S.latest.elapsed_s) return;
      S.latest = r; S.lastSeq = r.seq; pushHistory(r); break;
    case 'summary':
      S.summary = r; S.ended = true; pushHistory(r);
      S.verdicts = r.verdicts.map((v) => ({ type: 'verdict', ...v }));
      for (const o of r.oom_kills) onRecord({ type: 'oom_kill', ...o });
      if (es) es.close();
      setStatus('ended', 'ended: ' + r.end_reason.replace(/_/g, ' '));
      break;
    case 'verdict':
      S.verdicts = S.verdicts.filter((v) => !(v.scope === r.scope && v.pid === r.pid && v.cgroup === r.cgroup)).concat([r]); break;
    case 'oom_kill': if (!S.ooms.some((o) => ookey(o) === ookey(r))) S.ooms.push(r); break;
    case 'event': { // a ring of the newest 256, redrawn at most once a second
      const k = evkey(r);
      if (S.evkeys.has(k)) return;
      S.events.push(r); S.evkeys.add(k);
      if (S.events.length > 256) S.evkeys.delete(evkey(S.events.shift()));
      if (!evTimer) evTimer = setTimeout(() => { evTimer = null; renderHealth(); }, 1000);
      return;
    }
    default: return; // a record type this page does not know: ignore
  }
  schedule();
}
async function loadSnapshot() {
  const res = await fetch('/api/snapshot', { cache: 'no-store' });
  if (!res.ok) throw new Error('HTTP ' + res.status);
  const s = await res.json();
  S.meta = s.meta; S.latest = s.latest; S.summary = s.summary; S.ended = !!s.summary;
  S.verdicts = s.verdicts || []; S.ooms = s.oom_kills || []; S.events = s.events || [];
  S.evkeys = new Set(S.events.map(evkey));
  S.clients = s.server ? s.server.clients : null;
  S.lastSeq = s.latest ? s.latest.seq : 0;
  S.hist = emptyHistory();
  const h = s.history;
  if (h && h.elapsed_s) {
    for (const k of HKEYS) S.hist[k] = (h[k] || []).slice();
    for (const k of HKEYS) while (S.hist[k].length < h.elapsed_s.length) S.hist[k].push(null);
    S.hist.evicted_by = Object.fromEntries(Object.entries(h.evicted_by || {}).map(([k, v]) => [k, v.slice()]));
  }
  if (S.summary) pushHistory(S.summary); else if (S.latest) pushHistory(S.latest);
  schedule();
}
let es = null, broken = false;
function connect() {
  if (S.ended) return;
  es = new EventSource('/events');
  es.onopen = () => {
    setStatus('live', 'live');
    if (broken) { broken = false; loadSnapshot().catch(() => {}); }
  };
  es.onerror = () => {
    if (S.ended) { es.close(); return; }
    broken = true;
    setStatus('reconnecting', 'reconnecting…');
    if (es.readyState === EventSource.CLOSED) setTimeout(connect, 2000); // the browser gave up: retry ourselves
  };
  for (const t of ['meta', 'interval', 'verdict', 'event', 'oom_kill', 'summary']) {
    es.addEventListener(t, (e) => { try { onRecord(JSON.parse(e.data)); } catch (err) { console.error('bad record', err); } });
  }
}
async function refreshClients() { // mmtrace_sse_clients from /metrics
  try {
    const m = /^mmtrace_sse_clients(?:\{[^}]*\})? (\d+)/m.exec(await (await fetch('/metrics')).text());
    if (m) { S.clients = +m[1]; renderHealth(); }
  } catch (e) { /* keep the snapshot's number */ }
}
async function boot() {
  buildCards();
  S.hist = emptyHistory();
  for (;;) {
    try { await loadSnapshot(); break; } catch (e) { setStatus('reconnecting', 'server unreachable, retrying…'); await new Promise((r) => setTimeout(r, 2000)); }
  }
  if (S.ended) setStatus('ended', 'ended: ' + S.summary.end_reason.replace(/_/g, ' ')); else connect();
  setInterval(() => { if (!S.ended) refreshClients(); }, 5000);
}
boot();
