// Corral web UI, part 2: the Volumes page (list, create, attach, detach, expand, delete).
'use strict';

function volumeLink(name) {
  return el('a', { href: '/volumes/' + encodeURIComponent(name) }, name);
}

function healthyReplicas(v) {
  // A detached volume's replicas have no mode: those that did not fail count.
  if (v.state === 'detached') return v.replicas.filter((r) => !r.failedAt).length;
  return v.replicas.filter((r) => r.mode === 'RW').length;
}

// The buttons of a volume's actions; `section` names where their errors show.
function volumeActions(v, section) {
  const path = '/v1/volumes/' + encodeURIComponent(v.name);
  const busy = v.state === 'deleting';
  const buttons = [];
  if (v.state === 'detached') {
    buttons.push(el('button', { type: 'button', disabled: busy, onclick: () => act(section, () => api('POST', path + '/attach', {})) }, 'Attach'));
  }
  if (v.state === 'attached' || v.state === 'attaching') {
    buttons.push(el('button', {
      type: 'button',
      onclick: async () => {
        if (await confirmAction('Detach volume ' + v.name + '? Its block device goes away.') === null) return;
        act(section, () => api('POST', path + '/detach', {}));
      },
    }, 'Detach'));
  }
  buttons.push(el('button', {
    type: 'button',
    disabled: busy,
    onclick: async () => {
      const size = await confirmAction('Expand volume ' + v.name + ' (now ' + fmtBytes(v.size) + ')?', 'New size', fmtBytes(v.size).replace(' ', '').replace('iB', 'i'));
      if (size === null) return;
      const bytes = parseSize(size);
      if (isNaN(bytes)) { showError(section, 'Size ' + JSON.stringify(size) + ' is not a size (use e.g. 2Gi)'); return; }
      act(section, () => api('POST', path + '/expand', { size: bytes }));
    },
  }, 'Expand'));
  buttons.push(el('button', {
    type: 'button',
    class: 'danger',
    disabled: busy,
    onclick: async () => {
      if (await confirmAction('Delete volume ' + v.name + ' and all its data? This cannot be undone.') === null) return;
      act(section, () => api('DELETE', path));
    },
  }, 'Delete'));
  return buttons;
}

Corral.pages.volumes = {
  volumes: new Map(),
  lastBackup: new Map(),

  filter() {
    const q = new URLSearchParams(location.search);
    return { robustness: q.get('robustness'), state: q.get('state') };
  },

  shown(v) {
    const f = this.filter();
    if (f.state && v.state !== f.state) return false;
    if (f.robustness && (v.robustness !== f.robustness || v.state === 'detached')) return false;
    return true;
  },

  row(v) {
    return el('tr', { dataset: { name: v.name, state: v.state, robustness: v.robustness } },
      el('td', {}, volumeLink(v.name)),
      el('td', { class: 'state' }, badge(v.state)),
      el('td', { class: 'robustness' }, badge(v.robustness)),
      el('td', {}, fmtBytes(v.size)),
      el('td', { class: 'actual-size' }, fmtBytes(v.actualSize || 0)),
      el('td', {}, healthyReplicas(v) + '/' + v.numberOfReplicas),
      el('td', {}, v.nodeId || '—'),
      el('td', { class: 'endpoint' }, v.endpoint || '—'),
      el('td', {}, fmtTime(this.lastBackup.get(v.name))),
      el('td', { class: 'actions' }, volumeActions(v, 'list')));
  },

  render() {
    const rows = [...this.volumes.values()].filter((v) => this.shown(v))
      .sort((a, b) => a.name.localeCompare(b.name)).map((v) => this.row(v));
    fillTable($('#volumes-table'), rows, 'No volumes.', 10);
  },

  // Replace one row in place (keeps the others, and where the keyboard is, untouched).
  patch(name) {
    const body = $('#volumes-table').tBodies[0];
    const old = body.querySelector('tr[data-name="' + CSS.escape(name) + '"]');
    const v = this.volumes.get(name);
    if (v && this.shown(v) && old) {
      const fresh = this.row(v);
      const focused = old.contains(document.activeElement) ? document.activeElement.textContent : null;
      old.replaceWith(fresh);
      if (focused) [...fresh.querySelectorAll('button')].find((b) => b.textContent === focused)?.focus();
    } else {
      this.render();
    }
  },

  async loadBackups() {
    const target = await api('GET', '/v1/backuptarget');
    if (!target.url) return;
    const bvs = await api('GET', '/v1/backupvolumes');
    this.lastBackup = new Map(bvs.map((b) => [b.name, b.lastBackupAt]));
    const urls = $('#backup-urls');
    if (urls) urls.replaceChildren();
    this.render();
  },

  async load() {
    const f = this.filter();
    const note = $('#filter-note');
    const which = f.robustness || f.state;
    note.hidden = !which;
    if (which) note.replaceChildren('Showing ' + which + ' volumes. ', el('a', { href: '/volumes' }, 'Show all'));
    const list = await api('GET', '/v1/volumes');
    this.volumes = new Map(list.map((v) => [v.name, v]));
    this.render();
    await act('list', () => this.loadBackups());
  },

  change(m) {
    if (m.kind === 'volume') {
      if (m.deleted) this.volumes.delete(m.name); else this.volumes.set(m.name, m.object);
      this.patch(m.name);
    } else if (m.kind === 'backupVolume' || (m.kind === 'backup' && m.object && m.object.state === 'completed')) {
      this.reloadBackups();
    }
  },

  reloadBackups: debounce(() => act('list', () => Corral.pages.volumes.loadBackups()), 300),

  init() {
    $('#create-volume').addEventListener('submit', async (event) => {
      event.preventDefault();
      const form = event.target;
      const data = new FormData(form);
      const fromBackup = data.get('fromBackup').trim();
      const size = data.get('size').trim() === '' && fromBackup ? 0 : parseSize(data.get('size'));
      if (isNaN(size)) { showError('create', 'Size ' + JSON.stringify(data.get('size')) + ' is not a size (use e.g. 1Gi)'); return; }
      const body = {
        name: data.get('name').trim(),
        size,
        numberOfReplicas: parseInt(data.get('replicas'), 10) || undefined,
        dataLocality: data.get('dataLocality'),
      };
      if (fromBackup) body.fromBackup = fromBackup;
      const created = await act('create', () => api('POST', '/v1/volumes', body));
      if (created) {
        form.elements.name.value = '';
        this.volumes.set(created.name, created);
        this.patch(created.name);
      }
    });
    // The browser's own pattern check would hide the API's message; the API is the judge.
    $('#create-volume').noValidate = true;
  },
};
