<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
% if refresh:
<meta http-equiv="refresh" content="{{refresh}}">
% end
<link rel="icon" href="data:,">
<title>Tally: {{stats['total_views']}} view{{'' if stats['total_views'] == 1 else 's'}} in {{stats['days']}} day{{'' if stats['days'] == 1 else 's'}}{{' on ' + host_label(stats['site']) if stats['site'] else ''}}</title>
<style>
  :root { --ink: #1d2433; --muted: #667085; --bar: #3b6fd8; --line: #e4e7ec; --bad: #c0362c; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink); background: #f7f8fa; }
  main { max-width: 960px; margin: 0 auto; padding: 16px; }
  h1 { font-size: 1.4rem; margin: 0 0 4px; }
  h2 { font-size: 1.05rem; margin: 0 0 8px; }
  .muted { color: var(--muted); font-size: .85rem; }
  .cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(140px, 1fr)); gap: 12px; margin: 16px 0; }
  .card, section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
  .card b { display: block; font-size: 1.5rem; }
  section { margin-bottom: 16px; overflow-x: auto; }
  svg { width: 100%; height: auto; display: block; }
  svg rect.bar { fill: var(--bar); }
  svg rect.visitors { fill: #173a80; }
  .key i { display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 10px; }
  nav a.current { font-weight: 600; color: var(--ink); text-decoration: none; }
  svg text { font-size: 11px; fill: var(--muted); }
  table { width: 100%; border-collapse: collapse; }
  th, td { text-align: left; padding: 5px 6px; border-bottom: 1px solid var(--line); vertical-align: top; }
  td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
  td.path { word-break: break-all; }
  svg polyline.previous { fill: none; stroke: #98a2b3; stroke-width: 1.5; stroke-dasharray: 4 3; }
  svg circle.previous { fill: #fff; stroke: #98a2b3; stroke-width: 1.5; }
  .key i.dash { width: 16px; height: 0; border-top: 2px dashed #98a2b3; vertical-align: middle; }
  .change { font-weight: 600; color: var(--ink); }
  .chips { display: flex; flex-wrap: wrap; gap: 8px; align-items: center; margin: 12px 0 0; }
  .chip { display: inline-block; max-width: 100%; overflow-wrap: anywhere; padding: 3px 10px; border: 1px solid #b6c6ef;
    border-radius: 14px; background: #eaf0fc; color: var(--ink); text-decoration: none; }
  .chip span { color: var(--muted); margin-left: 2px; }
  .chip:hover span { color: var(--bad); }
  .sr { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); }
  /* Two columns of panels where there is room, one on a phone; minmax(0, ...) lets long values wrap. */
  .panels { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 16px; }
  .panels section { margin: 0; overflow-x: visible; }
  @media (max-width: 720px) { .panels { grid-template-columns: minmax(0, 1fr); } }
  .panel table { table-layout: fixed; }
  .panel col.num { width: 5.2em; }
  .panel col.num.wide { width: 7em; }  /* "Conversion" */
  /* On a phone the numbers take smaller type: at 15px their columns (17.4em in the events panel)
     left an event's name about 50px at 375px, which cut "Signup" in two. Still room for 7 digits. */
  @media (max-width: 480px) {
    .panel th, .panel td { padding: 5px 4px; }
    .panel td.num { font-size: .85rem; }
    .panel th.num { font-size: .75rem; }
    .panel col.num { width: 4.4em; }
    .panel col.num.wide { width: 5.8em; }
  }
  /* At 320px the same columns left a name 39px ("Sig" / "nup"); headers in smaller type free
     about 40px more. Six digits still fit. */
  @media (max-width: 360px) {
    .panel th.num { font-size: .68rem; }
    .panel td.num { font-size: .8rem; }
    .panel col.num { width: 3.7em; }
    .panel col.num.wide { width: 5em; }
  }
  .panel td.value, .panel th.value { overflow-wrap: anywhere; word-break: break-word; }
  .panel td.value a { color: var(--ink); text-decoration: none; }
  .panel td.value a:hover { color: var(--bar); text-decoration: underline; }
  .panel tr.active td { background: #eaf0fc; }
  .failed { color: var(--bad); }
  /* A job's error, a report's site, recipient and error: a token with no space in it (a long
     argument, an address, an SMTP answer) made the table thousands of pixels wide, its card
     scrolling sideways to read it. `anywhere` lets the column shrink to fit, then breaks it. */
  #recent-failures td.failed, #report-failures td.wrap { overflow-wrap: anywhere; }
  /* On a phone their other columns (a task's name, a period, "Attempts") still passed 375px by up
     to 150px: smaller type, and any cell may break (a task's name after its underscores only). */
  @media (max-width: 480px) {
    #recent-failures th, #recent-failures td, #report-failures th, #report-failures td { padding: 5px 3px; font-size: .8rem; }
    #recent-failures th, #report-failures th { font-size: .7rem; }
    #recent-failures td:not(.task), #report-failures td { overflow-wrap: anywhere; }
  }
  /* Without SITES a site is any host a beacon names, up to 253 characters of no spaces. */
  nav a { margin-right: 10px; overflow-wrap: anywhere; }
  ul.counts { list-style: none; display: flex; flex-wrap: wrap; gap: 8px; padding: 0; margin: 0 0 8px; }
  ul.counts li { border: 1px solid var(--line); border-radius: 6px; padding: 4px 10px; }
  ul.counts b { font-variant-numeric: tabular-nums; }
  header { display: flex; justify-content: space-between; align-items: baseline; gap: 12px; }
  header form { margin: 0; }
  header button { font: inherit; padding: 4px 12px; border: 1px solid var(--line); border-radius: 6px; background: #fff; cursor: pointer; }
</style>
</head>
<body>
<main>
  <header>
    <h1>Tally</h1>
    % if logout_token:
    <form id="logout-form" method="post" action="/logout"><input type="hidden" name="csrf" value="{{logout_token}}"><button type="submit">Log out</button></form>
    % elif not owner:
    <a id="login-link" href="{{login}}">Owner log in</a>
    % end
  </header>
  <div class="muted">Served by {{dyno}} at {{when(stats['generated_at'])}}; days in {{stats['tz']}};
    % if refresh:
    reloads every {{refresh}} s (<a id="reloads-toggle" href="{{reloads_toggle}}">stop reloading</a>).
    % else:
    does not reload itself (<a id="reloads-toggle" href="{{reloads_toggle}}">reload every 30 s</a>).
    % end
    <nav>Window:
      % for window, name in windows:
      <a href="/{{query(window, stats['site'], stats['tz'])}}" class="{{'current' if window == stats['days'] else ''}}">{{name}}</a>
      % end
    </nav>
    <nav id="site-switcher">Site:
      <a href="/{{query(stats['days'], None, stats['tz'])}}" class="{{'current' if not stats['site'] else ''}}">all sites</a>
      % for row in sites:
      <a href="/{{query(stats['days'], row['site'], stats['tz'])}}" class="{{'current' if row['site'] == stats['site'] else ''}}" data-site="{{row['site']}}">{{host_label(row['site'])}}</a>
      % end
      % if stats['site'] and stats['site'] not in [row['site'] for row in sites]:
      <a href="/{{query(stats['days'], stats['site'], stats['tz'])}}" class="current" data-site="{{stats['site']}}">{{host_label(stats['site'])}}</a>
      % end
    </nav>
  </div>

  % if chips:
  <div id="filters" class="chips" aria-label="Filters">
    % for chip in chips:
    <a class="chip" href="{{chip.href}}" data-filter="{{chip.name}}" title="Remove this filter">{{chip.label}} <span aria-hidden="true">×</span><span class="sr">(remove)</span></a>
    % end
    % if len(chips) > 1:
    <a class="clear" href="{{clear}}">clear all</a>
    % end
  </div>
  % if retention.note:
  <p id="retention-note" class="muted">{{retention.note}}</p>
  % end
  % end

  <div class="cards">
    <div class="card"><span class="muted">Views, {{stats['days']}} day{{'' if stats['days'] == 1 else 's'}}</span><b id="total-views">{{stats['total_views']}}</b>
      % if retention.previous_not_kept:
      <span class="muted">period before not kept</span>
      % elif previous:
      <span class="muted"><span id="views-change" class="change">{{change(previous['change_percent']['total_views'])}}</span> vs {{previous['total_views']}} before</span>
      % end
    </div>
    <div class="card"><span class="muted">Visitors, {{stats['days']}} day{{'' if stats['days'] == 1 else 's'}}</span><b id="total-visitors">{{stats['visitors']}}</b>
      % if retention.previous_not_kept:
      <span class="muted">period before not kept</span>
      % elif previous:
      <span class="muted"><span id="visitors-change" class="change">{{change(previous['change_percent']['visitors'])}}</span> vs {{previous['visitors']}} before</span>
      % end
    </div>
    % for key, label in (('visits', 'Visits'), ('bounce_rate', 'Bounce rate'), ('visit_duration_seconds', 'Visit duration'), ('views_per_visit', 'Views per visit')):
    <div class="card"><span class="muted">{{label}}</span><b id="{{key.replace('_', '-')}}">{{card_value(key, stats[key])}}</b>
      % if retention.previous_not_kept:
      <span class="muted">period before not kept</span>
      % elif previous:
      <span class="muted"><span id="{{key.replace('_', '-')}}-change" class="change">{{change(previous['change_percent'][key])}}</span> vs {{card_value(key, previous[key])}} before</span>
      % end
    </div>
    % end
    <div class="card"><span class="muted">Visitors now, last 5 min</span><b id="current-visitors">{{stats.get('current_visitors', 0)}}</b></div>
    <div class="card"><span class="muted">Views, last 24 h</span><b id="views-24h">{{stats['views_last_24h']}}</b></div>
    <div class="card"><span class="muted">Crawler hits filtered</span><b id="crawlers-filtered">{{none if stats['crawlers_filtered'] is None else stats['crawlers_filtered']}}</b>
      % if stats['crawlers_filtered'] is None:
      <span class="muted">not counted under a filter</span>
      % end
    </div>
    % if processes is not None:
    <div class="card"><span class="muted">Workers alive</span><b id="workers-alive">{{processes['workers_alive']}}</b>
      % if processes['worker_heartbeat_age_seconds'] is None:
      <span class="muted" id="worker-heartbeat">no worker running (a worker that stops takes its row with it)</span></div>
      % else:
      <span class="muted" id="worker-heartbeat">heartbeat {{age(processes['worker_heartbeat_age_seconds'])}}</span></div>
      % end
    <div class="card"><span class="muted">Last clock tick</span><b id="clock-tick">{{age(processes['clock_last_defer_age_seconds'])}}</b></div>
    <div class="card"><span class="muted">Last rollup</span><b id="rollup-age">{{age(processes['rollup_age_seconds'])}}</b>
      <span class="muted" id="rollup-waiting">{{processes['rollup_views_waiting']}} views waiting</span></div>
    % end
  </div>

  <section>
    <h2>Views and visitors per day
      % if owner:
      <a class="muted" id="export" href="/api/export{{export}}">CSV, per day</a>
      % end
    </h2>
    <div class="muted key"><i style="background: var(--bar)"></i>views<i style="background: #173a80"></i>visitors
      % if previous:
      <i class="dash"></i>views, {{previous['first_day']}} to {{previous['last_day']}}{{' (not kept)' if retention.previous_not_kept else ''}}
      % end
    </div>
    <svg id="daily-chart" viewBox="0 0 {{width}} {{height}}" role="img" aria-label="Views and visitors per day, last {{stats['days']}} day{{'' if stats['days'] == 1 else 's'}}">
      <line x1="0" y1="{{baseline}}" x2="{{width}}" y2="{{baseline}}" stroke="#e4e7ec"/>
      % for bar in bars:
      <rect class="bar" x="{{bar['x']}}" y="{{bar['y']}}" width="{{bar['width']}}" height="{{bar['height']}}" data-day="{{bar['day']}}" data-views="{{bar['views']}}"><title>{{bar['day']}}: {{bar['views']}} views, {{bar['visitors']}} visitors{{'; %s: %s views' % (bar['previous']['day'], bar['previous']['views']) if bar['previous'] else ''}}</title></rect>
      <rect class="visitors" x="{{bar['visitors_x']}}" y="{{bar['visitors_y']}}" width="{{bar['visitors_width']}}" height="{{bar['visitors_height']}}" data-day="{{bar['day']}}" data-visitors="{{bar['visitors']}}"><title>{{bar['day']}}: {{bar['visitors']}} visitors</title></rect>
      % if bar['label']:
      <text x="{{bar['label_at']}}" y="{{height - 8}}" text-anchor="{{bar['label_anchor']}}">{{bar['label']}}</text>
      % end
      % end
      % if previous_points:
      <polyline id="previous-line" class="previous" points="{{previous_points}}"/>
      % end
      % if markers:
      % for bar in bars:
      % if bar['previous']:
      <circle class="previous" cx="{{bar['label_x']}}" cy="{{bar['previous']['y']}}" r="2.5" data-day="{{bar['previous']['day']}}" data-views="{{bar['previous']['views']}}"><title>{{bar['previous']['day']}}: {{bar['previous']['views']}} views</title></circle>
      % end
      % end
      % end
    </svg>
  </section>

  <div class="panels">
  % for panel in panels:
  <section class="panel" id="panel-{{panel.name}}">
    <h2>{{panel.title}}</h2>
    <table id="{{panel.id}}" data-dimension="{{panel.name}}">
      <colgroup><col><col class="num"><col class="num"></colgroup>
      <tr><th>{{panel.heading}}</th><th class="num">Views</th><th class="num">Visitors</th></tr>
      % for row in panel.rows:
      <tr class="{{'active' if row.active else ''}}" data-value="{{row.value}}"><td class="value"><a href="{{row.href}}" title="Show only these views">{{row.label}}</a></td><td class="num views">{{row.views}}</td><td class="num visitors">{{row.visitors}}</td></tr>
      % end
      % if not panel.rows:
      % if panel is panels[0] and tracker_tag:
      <tr><td colspan="3" class="muted">No views yet: add <code id="tracker-tag">{{tracker_tag}}</code> to your pages.</td></tr>
      % else:
      <tr><td colspan="3" class="muted">None in this window.</td></tr>
      % end
      % end
    </table>
  </section>
  % end
  <section class="panel" id="panel-events">
    <h2>Goals and events</h2>
    <table id="top-events" data-dimension="event">
      <colgroup><col><col class="num"><col class="num"><col class="num wide"></colgroup>
      <tr><th>Event</th><th class="num">Events</th><th class="num">Visitors</th><th class="num">Conversion</th></tr>
      % for row in events:
      <tr class="{{'active' if row['active'] else ''}}" data-value="{{row['event']}}"><td class="value"><a href="{{row['href']}}" title="Show only the visitors who sent it">{{row['label']}}</a></td><td class="num events">{{row['events']}}</td><td class="num visitors">{{row['visitors']}}</td><td class="num conversion">{{row['percent']}}</td></tr>
      % end
      % if not events:
      <tr><td colspan="4" class="muted">No events in this window: tally.track("Signup") or data-tally-event="Signup" sends one.</td></tr>
      % end
    </table>
    % if stats.get('event_props'):
    <table id="event-props">
      <colgroup><col><col class="num"><col class="num"></colgroup>
      <tr><th class="value">{{as_text(stats['filters']['event'])}}: prop = value</th><th class="num">Events</th><th class="num">Visitors</th></tr>
      % for row in stats['event_props']:
      <tr data-prop="{{row['prop']}}" data-value="{{row['value']}}"><td class="value">{{as_text(row['prop'])}} = {{as_text(row['value'])}}</td><td class="num events">{{row['events']}}</td><td class="num visitors">{{row['visitors']}}</td></tr>
      % end
    </table>
    % end
  </section>
  % for key, title, rows in visit_pages:
  <section class="panel" id="panel-{{key}}">
    <h2>{{title}}</h2>
    <table id="{{key.replace('_', '-')}}" data-dimension="path">
      <colgroup><col><col class="num"></colgroup>
      <tr><th>Page</th><th class="num">Visits</th></tr>
      % for row in rows:
      <tr class="{{'active' if row['active'] else ''}}" data-value="{{row['path']}}"><td class="value"><a href="{{row['href']}}" title="Show only the views of this page">{{row['label']}}</a></td><td class="num visits">{{row['visits']}}</td></tr>
      % end
      % if not rows:
      <tr><td colspan="2" class="muted">None in this window.</td></tr>
      % end
    </table>
  </section>
  % end
  </div>

  % if queue is not None and queue.get('unreachable'):
  <section>
    <h2>Job queue</h2>
    <p id="queue-unreachable" class="failed">The primary database, where the job queue lives, is unreachable: the numbers above come from the replica.</p>
  </section>
  % elif queue is not None:
  <section>
    <h2>Job queue <a class="muted" id="jobs-link" href="/jobs">jobs, queues and schedules</a></h2>
    % if processes and processes['paused_queues']:
    <p id="paused-queues" class="failed">Paused queues: {{', '.join(row['queue'] for row in processes['paused_queues'])}}</p>
    % end
    <ul id="job-counts" class="counts">
      % for status, count in queue['by_status'].items():
      <li class="{{'failed' if status == 'failed' and count else ''}}"><b>{{count}}</b> {{status}}</li>
      % end
    </ul>
    <p class="muted">Oldest waiting job: {{'none waiting' if queue['oldest_waiting_age_seconds'] is None else age(queue['oldest_waiting_age_seconds']).replace(' ago', '')}}</p>
    <h2>Recent failures</h2>
    <table id="recent-failures">
      <tr><th>Job</th><th>Task</th><th class="num">Attempts</th><th>Failed</th><th>Error</th></tr>
      % for job in queue['recent_failures']:
      <tr><td><a href="/jobs/{{job['id']}}">{{job['id']}}</a></td><td class="task">{{!breakable(job['task'])}}</td><td class="num">{{job['attempts']}}</td><td>{{when(job['failed_at'])}}</td><td class="failed">{{job['error'] or ''}}</td></tr>
      % end
      % if not queue['recent_failures']:
      <tr><td colspan="5" class="muted">No failed jobs.</td></tr>
      % end
    </table>
    % if queue.get('report_failures'):
    <h2>Reports not delivered</h2>
    <table id="report-failures">
      <tr><th>Site</th><th>Period</th><th>Recipient</th><th>Status</th><th class="num">Attempts</th><th>Error</th></tr>
      % for row in queue['report_failures']:
      <tr><td class="wrap">{{row['site']}}</td><td>{{row['period']}}</td><td class="wrap">{{row['recipient']}}</td><td>{{row['status']}}</td><td class="num">{{row['attempts']}}</td><td class="failed wrap">{{row['error'] or ''}}</td></tr>
      % end
    </table>
    % end
  </section>
  % end
</main>
</body>
</html>
