// Corral web UI, part 4: the Dashboard, Nodes and disks, Backups, Recurring jobs, Settings and
// Events pages.
'use strict';

function countItem(label, value, href, kind) {
  return el('li', { class: kind || '' }, el('a', { href }, el('span', { class: 'count', dataset: { count: label } }, value), ' ', label));
}

Corral.pages.dashboard = {
  volumes: new Map(),
  nodes: new Map(),

  render() {
    const vs = [...this.volumes.values()];
    const detached = vs.filter((v) => v.state === 'detached').length;
    const by = (r) => vs.filter((v) => v.state !== 'detached' && v.robustness === r).length;
    $('#volume-counts').replaceChildren(
      countItem('healthy', by('healthy'), '/volumes?robustness=healthy', 'healthy'),
      countItem('degraded', by('degraded'), '/volumes?robustness=degraded', 'degraded'),
      countItem('faulted', by('faulted'), '/volumes?robustness=faulted', 'faulted'),
      countItem('detached', detached, '/volumes?state=detached', 'detached'));
    const disks = [...this.nodes.values()].flatMap((n) => n.disks.map((d) => ({ ...d, nodeOk: n.allowScheduling })));
    const sum = (f) => disks.reduce((a, d) => a + f(d), 0);
    $('#storage-counts').replaceChildren(
      countItem('schedulable', fmtBytes(sum((d) => (d.allowScheduling && d.nodeOk ? Math.max(0, d.storageMaximum - d.storageReserved) : 0))), '/nodes'),
      countItem('reserved', fmtBytes(sum((d) => d.storageReserved)), '/nodes'),
      countItem('used', fmtBytes(sum((d) => Math.max(0, d.storageMaximum - d.storageAvailable))), '/nodes'),
      countItem('scheduled', fmtBytes(sum((d) => d.storageScheduled)), '/nodes'));
    const ns = [...this.nodes.values()];
    $('#node-counts').replaceChildren(
      countItem('ready', ns.filter((n) => n.ready).length, '/nodes', 'healthy'),
      countItem('down', ns.filter((n) => !n.ready).length, '/nodes', 'faulted'),
      countItem('disabled', ns.filter((n) => !n.allowScheduling).length, '/nodes', 'detached'));
  },

  async load() {
    const [vs, ns, events] = await Promise.all([api('GET', '/v1/volumes'), api('GET', '/v1/nodes'), api('GET', '/v1/events')]);
    this.volumes = new Map(vs.map((v) => [v.name, v]));
    this.nodes = new Map(ns.map((n) => [n.name, n]));
    this.render();
    fillTable($('#events-table'), events.reverse().slice(0, 10).map(eventRow), 'No events.', 5);
  },

  change(m) {
    const map = m.kind === 'volume' ? this.volumes : m.kind === 'node' ? this.nodes : null;
    if (map) {
      if (m.deleted) map.delete(m.name); else map.set(m.name, m.object);
      this.render();
    } else if (m.kind === 'event') {
      const body = $('#events-table').tBodies[0];
      body.querySelector('td.empty')?.parentElement.remove();
      body.prepend(eventRow(m.object));
      while (body.rows.length > 10) body.deleteRow(-1);
    }
  },
};

Corral.pages.nodes = {
  nodes: new Map(),

  card(n) {
    const path = '/v1/nodes/' + encodeURIComponent(n.name);
    const tags = el('input', { value: n.tags.join(', '), 'aria-label': 'tags of node ' + n.name, size: 20 });
    const disks = n.disks.map((d) => {
      const dpath = path + '/disks/' + encodeURIComponent(d.name);
      const dtags = el('input', { value: d.tags.join(', '), 'aria-label': 'tags of disk ' + d.name, size: 12 });
      return el('tr', { dataset: { name: d.name } },
        el('td', {}, d.name), el('td', {}, el('code', {}, d.path)), el('td', {}, fmtBytes(d.storageMaximum)),
        el('td', {}, fmtBytes(Math.max(0, d.storageMaximum - d.storageAvailable))), el('td', {}, fmtBytes(d.storageScheduled)),
        el('td', {}, fmtBytes(d.storageReserved)),
        el('td', {}, dtags, el('button', { type: 'button', onclick: () => act('nodes', () => api('PATCH', dpath, { tags: splitList(dtags.value) })) }, 'Save')),
        el('td', {}, el('button', { type: 'button', 'aria-pressed': d.allowScheduling,
          onclick: () => act('nodes', () => api('PATCH', dpath, { allowScheduling: !d.allowScheduling })) }, d.allowScheduling ? 'On' : 'Off')),
        el('td', {}, el('button', { type: 'button', class: 'danger', onclick: async () => {
          if (await confirmAction('Remove disk ' + d.name + ' (' + d.path + ') from node ' + n.name + '?') === null) return;
          act('nodes', () => api('DELETE', dpath));
        } }, 'Remove')));
    });
    return el('article', { class: 'node', dataset: { name: n.name } },
      el('h3', {}, n.name, ' ', badge(n.ready ? 'ready' : 'down', n.ready ? 'healthy' : 'faulted')),
      el('p', {}, 'Address ', el('code', {}, n.address), ' · scheduling ',
        el('button', { type: 'button', 'aria-pressed': n.allowScheduling,
          onclick: () => act('nodes', () => api('PATCH', path, { allowScheduling: !n.allowScheduling })) }, n.allowScheduling ? 'On' : 'Off'),
        ' · tags ', tags, el('button', { type: 'button', onclick: () => act('nodes', () => api('PATCH', path, { tags: splitList(tags.value) })) }, 'Save')),
      el('div', { class: 'scroll' }, el('table', {},
        el('thead', {}, el('tr', {}, ['Disk', 'Path', 'Size', 'Used', 'Scheduled', 'Reserved', 'Tags', 'Scheduling', ''].map((h) => el('th', { scope: 'col' }, h)))),
        el('tbody', {}, disks.length ? disks : el('tr', {}, el('td', { colspan: 9, class: 'empty' }, 'No disks.'))))));
  },

  render() {
    const list = [...this.nodes.values()].sort((a, b) => a.name.localeCompare(b.name));
    $('#nodes-list').replaceChildren(...list.map((n) => this.card(n)));
    const select = $('#add-disk-node');
    const chosen = select.value;
    select.replaceChildren(...list.map((n) => el('option', { value: n.name, selected: n.name === chosen }, n.name)));
  },

  async load() {
    const ns = await api('GET', '/v1/nodes');
    this.nodes = new Map(ns.map((n) => [n.name, n]));
    this.render();
  },

  change(m) {
    if (m.kind !== 'node') return;
    if (m.deleted) this.nodes.delete(m.name); else this.nodes.set(m.name, m.object);
    // Not while the user types in this node's card: the next change or reload shows it.
    const card = $('#nodes-list article[data-name="' + CSS.escape(m.name) + '"]');
    if (card && card.contains(document.activeElement) && document.activeElement.tagName === 'INPUT') return;
    this.render();
  },

  init() {
    $('#add-disk').addEventListener('submit', async (event) => {
      event.preventDefault();
      const data = new FormData(event.target);
      const body = { path: data.get('path').trim(), tags: splitList(data.get('tags')) };
      if (data.get('name').trim()) body.name = data.get('name').trim();
      const done = await act('adddisk', () => api('POST', '/v1/nodes/' + encodeURIComponent(data.get('node')) + '/disks', body));
      if (done) event.target.reset();
    });
  },
};

Corral.pages.backups = {
  selected: null,

  async loadTarget() {
    const t = await api('GET', '/v1/backuptarget');
    $('#target-status').replaceChildren(t.url ? el('code', {}, t.url) : 'No backup target set.', ' ',
      t.url ? badge(t.available ? 'available' : 'unavailable', t.available ? 'healthy' : 'faulted') : '', ' ', t.message || '');
    const input = $('#set-target').elements.url;
    if (document.activeElement !== input && !input.value) input.value = t.url;
    return t;
  },

  async loadVolumes() {
    const t = await this.loadTarget();
    const bvs = t.url ? await api('GET', '/v1/backupvolumes') : [];
    const rows = bvs.map((b) => el('tr', { dataset: { name: b.name } },
      el('td', {}, b.name), el('td', {}, fmtBytes(b.size)), el('td', {}, fmtTime(b.lastBackupAt)), el('td', {}, b.backupCount),
      el('td', { class: 'actions' },
        el('button', { type: 'button', onclick: () => { this.selected = b.name; act('blist', () => this.loadBackups()); } }, 'Show backups'),
        el('button', { type: 'button', class: 'danger', onclick: async () => {
          if (await confirmAction('Delete backup volume ' + b.name + ' and all its backups?') === null) return;
          await act('bvolumes', () => api('DELETE', '/v1/backupvolumes/' + encodeURIComponent(b.name)));
          this.reload();
        } }, 'Delete'))));
    fillTable($('#bvolumes-table'), rows, 'No backup volumes.', 5);
    if (this.selected && !bvs.some((b) => b.name === this.selected)) this.selected = null;
  },

  async loadBackups() {
    const note = $('#blist-note');
    if (!this.selected) {
      note.textContent = 'Choose a backup volume above.';
      fillTable($('#backups-table'), [], 'No backup volume chosen.', 6);
      return;
    }
    note.textContent = 'Backups of ' + this.selected + ':';
    const path = '/v1/backupvolumes/' + encodeURIComponent(this.selected) + '/backups';
    const list = await api('GET', path);
    const rows = list.map((b) => el('tr', { dataset: { name: b.name, state: b.state } },
      el('td', {}, b.name), el('td', {}, b.snapshot), el('td', {}, badge(b.state), b.error ? ' ' + b.error : ''),
      el('td', {}, fmtBytes(b.size)), el('td', {}, fmtTime(b.created)),
      el('td', { class: 'actions' },
        el('button', { type: 'button', disabled: b.state !== 'completed', onclick: async () => {
          const name = await confirmAction('Restore backup ' + b.name + ' into a new volume.', 'New volume name', b.volume + '-restore');
          if (!name) return;
          const created = await act('blist', () => api('POST', '/v1/volumes', { name, fromBackup: b.url }));
          if (created) note.replaceChildren('Restoring into ', volumeLink(created.name), '.');
        } }, 'Restore'),
        el('button', { type: 'button', class: 'danger', onclick: async () => {
          if (await confirmAction('Delete backup ' + b.name + '?') === null) return;
          await act('blist', () => api('DELETE', path + '/' + encodeURIComponent(b.name)));
          this.reload();
        } }, 'Delete'))));
    fillTable($('#backups-table'), rows, 'No backups.', 6);
  },

  async load() {
    await act('bvolumes', () => this.loadVolumes());
    await act('blist', () => this.loadBackups());
  },

  reload: debounce(() => Corral.pages.backups.load(), 300),

  change(m) {
    if (['backup', 'backupVolume', 'backupTarget'].includes(m.kind)) this.reload();
  },

  init() {
    $('#set-target').addEventListener('submit', async (event) => {
      event.preventDefault();
      const url = event.target.elements.url.value.trim();
      if (await act('target', () => api('PUT', '/v1/backuptarget', { url }))) this.reload();
    });
  },
};

Corral.pages.recurringjobs = {
  jobs: new Map(),

  render() {
    const rows = [...this.jobs.values()].sort((a, b) => a.name.localeCompare(b.name)).map((j) => el('tr', { dataset: { name: j.name } },
      el('td', {}, j.name), el('td', {}, j.task), el('td', {}, el('code', {}, j.cron)), el('td', {}, j.retain), el('td', {}, j.concurrency),
      el('td', {}, j.volumes.join(', ') || '—'), el('td', {}, j.groups.join(', ') || '—'), el('td', {}, fmtTime(j.lastRun)),
      el('td', { class: 'actions' },
        el('button', { type: 'button', onclick: () => this.edit(j) }, 'Edit'),
        el('button', { type: 'button', class: 'danger', onclick: async () => {
          if (await confirmAction('Delete recurring job ' + j.name + '?') === null) return;
          act('jobs', () => api('DELETE', '/v1/recurringjobs/' + encodeURIComponent(j.name)));
        } }, 'Delete'))));
    fillTable($('#jobs-table'), rows, 'No recurring jobs.', 9);
  },

  edit(j) {
    const f = $('#job-form').elements;
    f.name.value = j.name; f.task.value = j.task; f.cron.value = j.cron; f.retain.value = j.retain;
    f.concurrency.value = j.concurrency; f.volumes.value = j.volumes.join(', '); f.groups.value = j.groups.join(', ');
    f.name.focus();
  },

  async load() {
    const list = await api('GET', '/v1/recurringjobs');
    this.jobs = new Map(list.map((j) => [j.name, j]));
    this.render();
  },

  change(m) {
    if (m.kind !== 'recurringJob') return;
    if (m.deleted) this.jobs.delete(m.name); else this.jobs.set(m.name, m.object);
    this.render();
  },

  init() {
    $('#job-form').addEventListener('submit', async (event) => {
      event.preventDefault();
      const d = new FormData(event.target);
      const job = {
        name: d.get('name').trim(), task: d.get('task'), cron: d.get('cron').trim(),
        retain: parseInt(d.get('retain'), 10) || 0, concurrency: parseInt(d.get('concurrency'), 10) || 0,
        volumes: splitList(d.get('volumes')), groups: splitList(d.get('groups')), labels: {},
      };
      // The API has no update of a job: an edit replaces it, and puts the old one back if the
      // API refuses the new one (the refusal is shown; the job is not lost).
      const old = this.jobs.get(job.name);
      const done = await act('job', async () => {
        if (!old) return api('POST', '/v1/recurringjobs', job);
        await api('DELETE', '/v1/recurringjobs/' + encodeURIComponent(job.name));
        try {
          return await api('POST', '/v1/recurringjobs', job);
        } catch (e) {
          await api('POST', '/v1/recurringjobs', { ...old, lastRun: undefined });
          throw e;
        }
      });
      if (done) event.target.reset();
    });
  },
};

const SETTING_GROUPS = [
  ['Replicas and scheduling', /^(replica|default-replica|storage|disk|node|soft|data-locality|default-data)/],
  ['Backups', /^backup/],
  ['Volumes', /^(volume|default|stale|auto|concurrent)/],
];

Corral.pages.settings = {
  settings: new Map(),

  group(name) {
    for (const [label, re] of SETTING_GROUPS) if (re.test(name)) return label;
    return 'General';
  },

  item(s) {
    const id = 'setting-' + s.name;
    const input = el('input', { id: id + '-value', value: s.value, 'aria-describedby': id + '-desc', size: 16 });
    return el('div', { class: 'setting', dataset: { name: s.name } },
      el('label', { for: id + '-value' }, el('strong', {}, s.name)),
      el('p', { id: id + '-desc', class: 'desc' }, s.description, ' Default: ', el('code', {}, s.default || '""'), '.'),
      el('form', { class: 'inline', onsubmit: (event) => {
        event.preventDefault();
        act(id, () => api('PUT', '/v1/settings/' + encodeURIComponent(s.name), { value: input.value }));
      } }, input, el('button', { type: 'submit' }, 'Save'),
      el('button', { type: 'button', onclick: () => { input.value = s.default; } }, 'Default')),
      el('p', { class: 'error', id: id + '-error', role: 'alert', hidden: true }));
  },

  render() {
    const groups = new Map();
    for (const s of this.settings.values()) {
      const g = this.group(s.name);
      if (!groups.has(g)) groups.set(g, []);
      groups.get(g).push(s);
    }
    $('#settings-groups').replaceChildren(...[...groups.entries()].map(([g, list]) =>
      el('section', {}, el('h2', {}, g), list.map((s) => this.item(s)))));
  },

  async load() {
    const list = await api('GET', '/v1/settings');
    this.settings = new Map(list.map((s) => [s.name, s]));
    this.render();
  },

  change(m) {
    if (m.kind !== 'setting' || !m.object) return;
    this.settings.set(m.name, m.object);
    const input = document.getElementById('setting-' + m.name + '-value');
    if (input && document.activeElement !== input) input.value = m.object.value;
    if (!input) this.render();
  },
};

Corral.pages.events = {
  events: [],

  render() {
    const type = $('#event-filter').value;
    const rows = this.events.filter((e) => !type || e.type === type).slice().reverse().slice(0, 500).map(eventRow);
    fillTable($('#events-table'), rows, 'No events.', 5);
  },

  async load() {
    this.events = await api('GET', '/v1/events');
    this.render();
  },

  change(m) {
    if (m.kind !== 'event') return;
    this.events.push(m.object);
    this.render();
  },

  init() {
    $('#event-filter').addEventListener('change', () => this.render());
  },
};
