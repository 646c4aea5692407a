// Corral web UI, part 1: helpers every page uses (API calls, the live stream's connection banner,
// the confirmation dialog, formatting). Our own code, no libraries; served as /ui/app.js.
'use strict';

const Corral = { pages: {} };

class ApiError extends Error {
  constructor(message, status, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function $(selector, root) {
  return (root || document).querySelector(selector);
}

// el('a', {href: '/x', class: 'y'}, 'text', childNode, ...): a new element. Attributes whose value
// is null, undefined or false are left out; `on*` attributes that are functions become listeners.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') node.addEventListener(key.slice(2), value);
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// One call of the REST API. Answers with the parsed JSON body (null when empty); an error answer
// throws an ApiError with the API's own message, an unreachable API shows the connection banner.
async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    connectionDown('the request failed (' + e.message + ')');
    throw new ApiError('Cannot reach the Corral API', 0, 'unavailable');
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch (_) { data = text; }
  }
  if (!response.ok) {
    const message = data && data.message ? data.message : 'HTTP ' + response.status;
    throw new ApiError(message, response.status, data && data.code);
  }
  return data;
}

function showError(id, message) {
  const p = document.getElementById(id + '-error');
  if (!p) return;
  p.textContent = message;
  p.hidden = !message;
}

function clearError(id) {
  showError(id, '');
}

// Run an action the user started in section `id`; its error is shown in that section.
async function act(id, fn) {
  clearError(id);
  try {
    return await fn();
  } catch (e) {
    showError(id, e.message);
    return undefined;
  }
}

function connectionDown(why) {
  const banner = $('#conn');
  banner.textContent = 'Cannot reach the Corral API: ' + why + '. Retrying…';
  banner.hidden = false;
  const live = $('#live');
  live.textContent = '○ offline';
  live.className = 'offline';
}

function connectionUp() {
  $('#conn').hidden = true;
  const live = $('#live');
  live.textContent = '● live';
  live.className = 'online';
}

// Ask before a destructive action. With `inputLabel`, the dialog also asks for a value.
// Resolves to the value ('' without input) when confirmed, null when cancelled.
function confirmAction(text, inputLabel, inputValue) {
  const dialog = $('#confirm');
  $('#confirm-text').textContent = text;
  const label = $('#confirm-input-label');
  const input = $('#confirm-input');
  label.hidden = !inputLabel;
  $('#confirm-input-name').textContent = inputLabel ? inputLabel + ' ' : '';
  input.value = inputValue || '';
  input.required = !!inputLabel;
  dialog.returnValue = '';
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => {
      resolve(dialog.returnValue === 'ok' ? input.value.trim() : null);
    }, { once: true });
    dialog.showModal();
    if (inputLabel) input.focus(); else $('#confirm-ok').focus();
  });
}

const UNITS = { '': 1, k: 1e3, m: 1e6, g: 1e9, t: 1e12, ki: 1024, mi: 1048576, gi: 1073741824, ti: 1099511627776 };

// "1Gi", "512MiB", "10G", "4096": bytes, or NaN.
function parseSize(text) {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$/i.exec(text || '');
  if (!m) return NaN;
  return Math.round(parseFloat(m[1]) * UNITS[(m[2] || '').toLowerCase()]);
}

function fmtBytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return (i === 0 ? String(v) : v.toFixed(v < 10 ? 1 : 0)) + ' ' + units[i];
}

function fmtTime(rfc3339) {
  if (!rfc3339) return '—';
  const d = new Date(rfc3339);
  return isNaN(d) ? rfc3339 : d.toLocaleString();
}

function splitList(text) {
  return (text || '').split(',').map((s) => s.trim()).filter((s) => s);
}

// Replace the rows of `table`'s body.
function fillTable(table, rows, emptyText, columns) {
  const body = table.tBodies[0];
  body.replaceChildren(...rows);
  if (!rows.length) body.append(el('tr', {}, el('td', { colspan: columns, class: 'empty' }, emptyText)));
}

// Call `fn` once after calls stop coming for `ms` (several stream messages, one reload).
function debounce(fn, ms) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}

function badge(text, kind) {
  return el('span', { class: 'badge ' + (kind || String(text).toLowerCase()) }, text);
}

function eventRow(e) {
  return el('tr', { class: e.type },
    el('td', {}, fmtTime(e.time)), el('td', {}, badge(e.type)),
    el('td', {}, e.resource === 'volume' ? el('a', { href: '/volumes/' + encodeURIComponent(e.name) }, 'volume ' + e.name)
      : e.resource + ' ' + e.name),
    el('td', {}, e.reason), el('td', {}, e.message));
}
