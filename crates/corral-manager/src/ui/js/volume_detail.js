// Corral web UI, part 3: one volume (fields, replicas with live rebuild progress, the snapshot
// tree, its backups, recurring jobs and events).
'use strict';

// The mode a replica is shown in: the engine's (RW, WO, ERR), and ERR also for a replica that
// failed and is not back in the engine yet (its process died: the engine dropped it, so the engine
// reports no mode, but it is a failed replica until rebuilt).
function replicaMode(r) {
  if (r.mode === 'RW' || r.mode === 'WO') return r.mode;
  if (r.mode === 'ERR' || r.failedAt || r.state === 'error') return 'ERR';
  return r.mode;
}

Corral.pages.volume = {
  name: null,
  volume: null,
  snapshots: [],

  path() {
    return '/v1/volumes/' + encodeURIComponent(this.name);
  },

  renderVolume() {
    const v = this.volume;
    const fields = $('#volume-fields');
    if (!v) {
      fields.replaceChildren(el('p', { class: 'empty' }, 'This volume does not exist (any more).'));
      $('#volume-actions').replaceChildren();
      fillTable($('#replicas-table'), [], 'No replicas.', 8);
      return;
    }
    const items = [
      ['State', badge(v.state)], ['Robustness', badge(v.robustness)], ['Size', fmtBytes(v.size)], ['Actual size', fmtBytes(v.actualSize || 0)],
      ['Replicas (healthy/desired)', healthyReplicas(v) + '/' + v.numberOfReplicas],
      ['Attached to', v.nodeId || '—'], ['Endpoint', v.endpoint || '—'],
      ['Maintenance', v.maintenance ? 'yes' : 'no'], ['Data locality', v.dataLocality],
      ['Stale replica timeout', v.staleReplicaTimeout + ' min'], ['From backup', v.fromBackup || '—'],
      ['Node selector', (v.nodeSelector || []).join(', ') || '—'], ['Disk selector', (v.diskSelector || []).join(', ') || '—'],
      ['Labels', Object.entries(v.labels || {}).map(([k, x]) => k + '=' + x).join(', ') || '—'],
      ['Conditions', (v.conditions || []).map((c) => c.type + '=' + c.status + (c.message ? ' (' + c.message + ')' : '')).join('; ') || '—'],
      ['Created', fmtTime(v.created)],
    ];
    fields.replaceChildren(...items.flatMap(([k, x]) => [el('dt', {}, k), el('dd', { dataset: { field: k } }, x)]));
    const actions = volumeActions(v, 'detail');
    if (v.state === 'detached') {
      actions.splice(1, 0, el('button', { type: 'button', onclick: () => act('detail', () => api('POST', this.path() + '/attach', { maintenance: true })) }, 'Attach in maintenance'));
    }
    $('#volume-actions').replaceChildren(...actions);
    const rows = v.replicas.map((r) => {
      const mode = replicaMode(r);
      const progress = r.rebuildProgress;
      const rebuilding = mode === 'WO';
      return el('tr', { dataset: { name: r.name, mode: mode || '' } },
        el('td', {}, r.name), el('td', {}, r.node), el('td', {}, r.disk),
        el('td', { class: 'mode' }, mode ? badge(mode, 'mode-' + mode) : '—'),
        el('td', {}, r.state || '—'),
        el('td', { class: 'actual-size' }, fmtBytes(r.actualSize || 0)),
        el('td', { class: 'rebuild' }, rebuilding
          ? [el('progress', { max: 100, value: progress || 0, 'aria-label': 'rebuild progress of ' + r.name }), ' ', (progress || 0) + '%']
          : '—'),
        el('td', {}, r.failedAt ? fmtTime(r.failedAt) : '—'));
    });
    fillTable($('#replicas-table'), rows, 'No replicas.', 8);
  },

  snapshotNode(s, children) {
    const path = this.path() + '/snapshots/' + encodeURIComponent(s.name);
    const kids = children.get(s.name) || [];
    return el('li', { dataset: { name: s.name } },
      el('span', { class: 'snap' }, el('strong', {}, s.name), ' ', fmtTime(s.created), ' · ', fmtBytes(s.size),
        s.userCreated ? '' : ' · system'),
      ' ',
      el('button', { type: 'button', onclick: () => act('snapshots', () => api('POST', this.path() + '/backups', { snapshot: s.name })) }, 'Back up'),
      el('button', {
        type: 'button',
        onclick: async () => {
          if (await confirmAction('Revert volume ' + this.name + ' to snapshot ' + s.name + '? Newer data is lost. The volume must be attached in maintenance mode.') === null) return;
          act('snapshots', () => api('POST', path + '/revert'));
        },
      }, 'Revert'),
      el('button', {
        type: 'button',
        class: 'danger',
        onclick: async () => {
          if (await confirmAction('Delete snapshot ' + s.name + '?') === null) return;
          await act('snapshots', () => api('DELETE', path));
          this.reloadSnapshots();
        },
      }, 'Delete'),
      kids.length ? el('ul', {}, kids.map((k) => this.snapshotNode(k, children))) : null);
  },

  renderSnapshots() {
    const byName = new Set(this.snapshots.map((s) => s.name));
    const children = new Map();
    const roots = [];
    for (const s of this.snapshots) {
      if (s.parent && byName.has(s.parent)) {
        if (!children.has(s.parent)) children.set(s.parent, []);
        children.get(s.parent).push(s);
      } else {
        roots.push(s);
      }
    }
    const tree = $('#snapshot-tree');
    tree.replaceChildren(...roots.map((s) => this.snapshotNode(s, children)));
    if (!roots.length) tree.append(el('li', { class: 'empty' }, 'No snapshots.'));
  },

  async loadSnapshots() {
    this.snapshots = await api('GET', this.path() + '/snapshots');
    this.renderSnapshots();
  },

  async loadBackups() {
    const target = await api('GET', '/v1/backuptarget');
    let backups = [];
    if (target.url) {
      const bvs = await api('GET', '/v1/backupvolumes');
      if (bvs.some((b) => b.name === this.name)) {
        backups = await api('GET', '/v1/backupvolumes/' + encodeURIComponent(this.name) + '/backups');
      }
    }
    const rows = backups.map((b) => el('tr', { dataset: { name: b.name, state: b.state } },
      el('td', {}, b.name), el('td', {}, b.snapshot), el('td', {}, badge(b.state), b.error ? ' ' + b.error : ''),
      el('td', {}, b.state === 'in-progress' ? el('progress', { max: 100, value: b.progress, 'aria-label': 'backup progress' }) : b.progress + '%'),
      el('td', {}, fmtBytes(b.size)), el('td', {}, fmtTime(b.created))));
    fillTable($('#vbackups-table'), rows, 'No backups.', 6);
  },

  async loadJobs() {
    const jobs = await api('GET', '/v1/recurringjobs');
    const labels = Object.keys((this.volume && this.volume.labels) || {});
    const mine = jobs.filter((j) => j.volumes.includes(this.name)
      || j.groups.some((g) => labels.includes('recurring-job-group.corral.io/' + g)));
    fillTable($('#vjobs-table'), mine.map((j) => el('tr', {}, el('td', {}, j.name), el('td', {}, j.task),
      el('td', {}, el('code', {}, j.cron)), el('td', {}, j.retain))), 'No recurring job applies to this volume.', 4);
  },

  async loadEvents() {
    const events = await api('GET', '/v1/events?resource=volume&name=' + encodeURIComponent(this.name));
    fillTable($('#events-table'), events.reverse().slice(0, 50).map(eventRow), 'No events.', 5);
  },

  async load() {
    try {
      this.volume = await api('GET', this.path());
    } catch (e) {
      if (e.status !== 404) throw e;
      this.volume = null;
    }
    this.renderVolume();
    await Promise.all([
      act('snapshots', () => this.loadSnapshots()),
      act('vbackups', () => this.loadBackups()),
      act('vjobs', () => this.loadJobs()),
      act('vevents', () => this.loadEvents()),
    ]);
  },

  reloadSnapshots: debounce(() => act('snapshots', () => Corral.pages.volume.loadSnapshots()), 200),
  reloadBackups: debounce(() => act('vbackups', () => Corral.pages.volume.loadBackups()), 300),
  reloadJobs: debounce(() => act('vjobs', () => Corral.pages.volume.loadJobs()), 300),

  change(m) {
    if (m.kind === 'volume' && m.name === this.name) {
      this.volume = m.deleted ? null : m.object;
      this.renderVolume();
    } else if (m.kind === 'snapshot' && m.volume === this.name) {
      this.reloadSnapshots();
    } else if ((m.kind === 'backup' && m.volume === this.name) || m.kind === 'backupVolume' || m.kind === 'backupTarget') {
      this.reloadBackups();
    } else if (m.kind === 'recurringJob') {
      this.reloadJobs();
    } else if (m.kind === 'event' && m.object.resource === 'volume' && m.object.name === this.name) {
      const body = $('#events-table').tBodies[0];
      body.querySelector('td.empty')?.parentElement.remove();
      body.prepend(eventRow(m.object));
    }
  },

  init() {
    this.name = $('#main').dataset.name;
    $('#take-snapshot').addEventListener('submit', async (event) => {
      event.preventDefault();
      const name = event.target.elements.name.value.trim();
      const done = await act('snapshots', () => api('POST', this.path() + '/snapshots', name ? { name } : {}));
      if (done) {
        event.target.elements.name.value = '';
        this.reloadSnapshots();
      }
    });
  },
};
