<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>Tally: jobs</title>
<style>
  :root { --ink: #1d2433; --muted: #667085; --line: #e4e7ec; --bad: #c0362c; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink); background: #f7f8fa; }
  main { max-width: 1100px; margin: 0 auto; padding: 16px; }
  h1 { font-size: 1.4rem; margin: 0 0 8px; }
  h2 { font-size: 1.05rem; margin: 0 0 8px; }
  section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; margin-bottom: 16px; overflow-x: auto; }
  table { width: 100%; border-collapse: collapse; }
  code.cron, td.next-run { white-space: nowrap; }
  th, td { text-align: left; padding: 5px 6px; border-bottom: 1px solid var(--line); vertical-align: top; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  form.inline { display: inline; margin: 0; }
  button, select, input { font: inherit; }
  button { padding: 2px 10px; border: 1px solid var(--line); border-radius: 6px; background: #fff; cursor: pointer; }
  .muted { color: var(--muted); font-size: .85rem; }
  .failed, .paused { color: var(--bad); }
  /* A div, not a p: a form ends a paragraph, which left its </p> stray. */
  .bulk { margin: 1em 0; }
  #notice { background: #eef4ff; border: 1px solid #b6cdf7; border-radius: 8px; padding: 8px 12px; margin-bottom: 12px; }
</style>
</head>
<body>
<main>
  <h1>Jobs <a class="muted" href="/">dashboard</a></h1>
  % if notice:
  <p id="notice" role="status">{{notice}}</p>
  % end

  <section>
    <h2>Queues</h2>
    <table id="queues">
      <tr><th>Queue</th><th>State</th><th></th></tr>
      % for queue in queues:
      <tr data-queue="{{queue}}" data-paused="{{'true' if queue in paused else 'false'}}">
        <td><a href="/jobs?queue={{quote(queue)}}">{{queue}}</a></td>
        % if not pausable(queue):
        <td>{{'paused since ' + when(paused[queue]) if queue in paused else 'running'}}</td>
        <td class="muted">cannot be paused here: a queue name for pause and resume is 1 to 40 of A-Z a-z 0-9 _ . : -</td>
        % elif queue in paused:
        <td class="paused">paused since {{when(paused[queue])}}</td>
        <td><form class="inline resume-form" method="post" action="/api/queues/{{quote(queue)}}/resume"><input type="hidden" name="csrf" value="{{csrf}}"><input type="hidden" name="next" value="{{here}}"><button type="submit">Resume</button></form></td>
        % else:
        <td>running</td>
        <td><form class="inline pause-form" method="post" action="/api/queues/{{quote(queue)}}/pause"><input type="hidden" name="csrf" value="{{csrf}}"><input type="hidden" name="next" value="{{here}}"><button type="submit">Pause</button></form></td>
        % end
      </tr>
      % end
    </table>
    <p class="muted">Queues appear here once they have jobs; pause one before it has any with <code>POST /api/queues/&lt;name&gt;/pause</code>.</p>
  </section>

  <section>
    <h2>Schedules <span class="muted">(times in {{zone}})</span></h2>
    <table id="schedules">
      <tr><th>Task</th><th>Cron (UTC)</th><th>Next run</th><th>Last deferral</th><th>Outcome</th><th>Newest job, any origin</th></tr>
      % for row in schedules:
      <tr data-task="{{row['task']}}">
        <td>{{row['task']}} <form class="inline run-now-form" method="post" action="/api/jobs/{{quote(row['task'])}}"><input type="hidden" name="csrf" value="{{csrf}}"><input type="hidden" name="next" value="{{here}}"><button type="submit" aria-label="Run {{row['task']}} now">Run now</button></form></td>
        <td><code class="cron">{{row['cron']}}</code></td>
        <td class="next-run">{{when(row['next_run'])}}</td>
        <td>{{when(row['last_deferred_at']) or 'never'}}</td>
        <td class="{{'failed' if row['last_status'] == 'failed' else ''}}">
          % if row['last_job_id']:
          <a href="/jobs/{{row['last_job_id']}}">{{row['last_status']}}</a>
          % else:
          {{'-' if not row['last_deferred_at'] else 'pruned'}}
          % end
        </td>
        <td class="newest {{'failed' if row['newest'] and row['newest']['status'] == 'failed' else ''}}">
          % if row['newest']:
          <a href="/jobs/{{row['newest']['job_id']}}">{{row['newest']['status']}}</a> <span class="muted">{{when(row['newest']['at'])}}</span>
          % else:
          -
          % end
        </td>
      </tr>
      % end
    </table>
  </section>

  <section>
    <h2>Jobs <span class="muted">newest first</span></h2>
    <form id="job-filter" method="get" action="/jobs">
      <label>Status <select name="status"><option value="">any</option>
        % for status in statuses:
        <option value="{{status}}" {{'selected' if filters['status'] == status else ''}}>{{status}}</option>
        % end
      </select></label>
      <label>Task <select name="task"><option value="">any</option>
        % for task in tasks:
        <option value="{{task}}" {{'selected' if filters['task'] == task else ''}}>{{task}}</option>
        % end
      </select></label>
      <label>Queue <select name="queue"><option value="">any</option>
        % for queue in queues:
        <option value="{{queue}}" {{'selected' if filters['queue'] == queue else ''}}>{{queue}}</option>
        % end
      </select></label>
      <button type="submit">Filter</button>
    </form>
    <div class="bulk">
      <form id="bulk-retry" class="inline" method="post" action="/api/jobs/bulk/retry?{{here.partition('?')[2]}}"><input type="hidden" name="csrf" value="{{csrf}}"><input type="hidden" name="next" value="{{here}}"><button type="submit">Retry every failed, cancelled or aborted job of this filter</button></form>
      <form id="bulk-cancel" class="inline" method="post" action="/api/jobs/bulk/cancel?{{here.partition('?')[2]}}"><input type="hidden" name="csrf" value="{{csrf}}"><input type="hidden" name="next" value="{{here}}"><label class="muted"><input type="checkbox" required> I mean every one{{'' if here.partition('?')[2] else ': no filter is set'}}</label> <button type="submit">Cancel every waiting or running job of this filter</button></form>
    </div>
    <table id="jobs">
      <tr><th>Job</th><th></th><th>Task</th><th>Status</th><th>Queue</th><th class="num">Attempts</th><th>Last event</th></tr>
      % for job in jobs:
      <tr data-job-id="{{job['id']}}" data-status="{{job['status']}}">
        <td><a href="/jobs/{{job['id']}}">{{job['id']}}</a></td>
        <td>
          % if job['status'] in ('failed', 'cancelled', 'aborted'):
          <form class="inline retry-form" method="post" action="/api/jobs/{{job['id']}}/retry"><input type="hidden" name="csrf" value="{{csrf}}"><input type="hidden" name="next" value="{{here}}"><button type="submit" aria-label="Retry job {{job['id']}}">Retry</button></form>
          % elif job['status'] in ('todo', 'doing'):
          <form class="inline cancel-form" method="post" action="/api/jobs/{{job['id']}}/cancel"><input type="hidden" name="csrf" value="{{csrf}}"><input type="hidden" name="next" value="{{here}}"><button type="submit" aria-label="{{'Cancel' if job['status'] == 'todo' else 'Abort'}} job {{job['id']}}">{{'Cancel' if job['status'] == 'todo' else 'Abort'}}</button></form>
          % end
        </td>
        <td>{{job['task']}}</td>
        <td class="{{'failed' if job['status'] == 'failed' else ''}}">{{job['status']}}{{' (abort requested)' if job['abort_requested'] and job['status'] == 'doing' else ''}}</td>
        <td>{{job['queue']}}</td><td class="num">{{job['attempts']}}</td><td>{{job['last_event'] or ''}} {{when(job['last_event_at'])}}</td>
      </tr>
      % end
      % if not jobs:
      <tr><td colspan="7" class="muted">No jobs match.</td></tr>
      % end
    </table>
    <p>
      % if first_page:
      <a id="first-page" href="{{first_page}}">newest</a>
      % end
      % if next_page:
      <a id="next-page" href="{{next_page}}">older jobs</a>
      % end
    </p>
  </section>
</main>
</body>
</html>
