"""The dashboard's HTML: server-rendered, every outside value escaped here, a little CSS and
plain JavaScript inline (no build step)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from html import escape
from urllib.parse import urlencode

from common.models import Step, Task, TaskStatus
from producer.report import (
    branch_of,
    confidence_text,
    format_duration,
    format_time,
    head_text,
    result_of,
    run_seconds,
    short,
    step_text,
)

CSS = """
:root{--bg:#f5f6f8;--card:#fff;--ink:#1d2330;--mute:#667085;--line:#e4e7ec;--link:#1f5fbf;
--wait:#667085;--processing:#1f6feb;--completed:#1a7f37;--failed:#cf222e;--cancelled:#9a6700}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
a{color:var(--link);text-decoration:none}a:hover{text-decoration:underline}
code,pre,.mono{font-family:ui-monospace,"SFMono-Regular","DejaVu Sans Mono",Menlo,monospace;
font-size:13px}
header.top{display:flex;align-items:center;gap:16px;padding:10px 20px;background:#1d2330;
color:#fff;flex-wrap:wrap}
header.top a{color:#fff}.brand{font-weight:700;font-size:17px}
header.top nav{display:flex;gap:14px;font-size:14px;opacity:.9}
#live-state{margin-left:auto;font-size:12px;opacity:.7}
main{max-width:1280px;margin:0 auto;padding:18px 20px 40px}
h1{font-size:21px;margin:4px 0 2px;overflow-wrap:anywhere}
h2{font-size:16px;margin:26px 0 10px}
.sub{color:var(--mute);font-size:13px;margin-bottom:14px;overflow-wrap:anywhere}
.counts{display:grid;grid-template-columns:repeat(auto-fit,minmax(120px,1fr));gap:10px;
margin-bottom:16px}
.count{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px 14px;
color:var(--ink);border-top:4px solid var(--c,var(--line))}
.count:hover{text-decoration:none;border-color:var(--c,#98a2b3)}
.count.on{box-shadow:0 0 0 2px var(--c,#98a2b3)}
.count b{display:block;font-size:24px;line-height:1.2}.count span{color:var(--mute);font-size:13px}
form.filters{display:flex;flex-wrap:wrap;gap:8px;align-items:end;margin-bottom:14px}
form.filters label{display:flex;flex-direction:column;font-size:12px;color:var(--mute);gap:2px}
input,select,button{font:inherit;font-size:14px;padding:6px 8px;border:1px solid #cfd4dc;
border-radius:6px;background:#fff;color:var(--ink);min-width:0}
button{background:#1d2330;color:#fff;border-color:#1d2330;cursor:pointer;padding:6px 14px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:14px 16px}
.scroll{overflow-x:auto;background:var(--card);border:1px solid var(--line);border-radius:8px}
table{border-collapse:collapse;width:100%}
th,td{padding:8px 10px;text-align:left;border-bottom:1px solid var(--line);vertical-align:top}
th{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:var(--mute);
background:#fafbfc;white-space:nowrap}
tr:last-child td{border-bottom:0}
td.wrap{overflow-wrap:anywhere;min-width:160px;max-width:360px}
td.num{white-space:nowrap}
.badge{display:inline-block;padding:1px 9px;border-radius:999px;font-size:12px;font-weight:600;
color:#fff;background:var(--c,#667085);white-space:nowrap}
.s-wait{--c:var(--wait)}.s-processing{--c:var(--processing)}.s-completed{--c:var(--completed)}
.s-failed{--c:var(--failed)}.s-cancelled{--c:var(--cancelled)}
.v-good{--c:var(--completed)}.v-bad{--c:var(--failed)}.v-skip{--c:var(--wait)}
.pager{display:flex;gap:16px;margin-top:12px}
.empty{color:var(--mute);padding:22px;text-align:center}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:14px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:5px 14px;margin:0;align-items:baseline}
dt{color:var(--mute);font-size:13px}dd{margin:0;overflow-wrap:anywhere}
.detail{color:var(--mute);font-size:12px;overflow-wrap:anywhere;margin-top:3px}
.bar{height:8px;background:var(--line);border-radius:4px;overflow:hidden;margin:6px 0 2px}
.bar i{display:block;height:100%;background:var(--processing)}
pre.report{background:#10151f;color:#e6edf3;padding:14px 16px;border-radius:8px;overflow-x:auto;
white-space:pre;margin:0}
.error{background:#fff1f0;border:1px solid #f5c2c0;color:#8a1f17;padding:10px 14px;
border-radius:8px;margin-bottom:14px}
@media (max-width:700px){
main{padding:12px 10px 30px}header.top{padding:10px 12px}
table.cards thead{display:none}
table.cards,table.cards tbody,table.cards tr,table.cards td{display:block;width:100%}
table.cards tr{border-bottom:1px solid var(--line);padding:8px 4px}
table.cards td{border:0;padding:3px 8px;display:flex;gap:10px;max-width:none;min-width:0}
table.cards td::before{content:attr(data-label);flex:0 0 86px;color:var(--mute);font-size:12px;
text-transform:uppercase;padding-top:2px}
table.cards td.wrap{overflow-wrap:anywhere}
form.filters label{flex:1 1 40%}
.counts{grid-template-columns:repeat(3,1fr);gap:6px}.count{padding:6px 10px}
.count b{font-size:19px}h1{font-size:19px}
}
"""

# Polls the JSON route named by <body data-live>, swaps in the server-rendered (escaped)
# fragments it returns and stops once the page's task is final (reloading to show its result).
JS = """
(function(){
  var body=document.body, url=body.dataset.live, every=+(body.dataset.every||4000);
  if(!url){return;}
  function tick(){
    fetch(url,{headers:{Accept:"application/json"},credentials:"same-origin"})
    .then(function(r){if(!r.ok){throw new Error("HTTP "+r.status);}return r.json();})
    .then(function(d){
      Object.keys(d.parts).forEach(function(id){
        var el=document.getElementById(id); if(el){el.innerHTML=d.parts[id];}
      });
      body.dataset.liveStatus="ok";
      var s=document.getElementById("live-state");
      if(s){s.textContent="live \\u00b7 "+new Date().toLocaleTimeString();}
      if(d.final&&body.dataset.status&&d.status!==body.dataset.status){location.reload();return;}
      if(!d.final){setTimeout(tick,every);}
    })
    .catch(function(){body.dataset.liveStatus="error";setTimeout(tick,every*2);});
  }
  setTimeout(tick,+(body.dataset.first||every));
})();
"""

LABELS = ("Name", "Suite", "Error id", "Status", "Pri", "Started", "Run time", "Step", "Group")


def e(value: object) -> str:
    return escape("" if value is None else str(value))


def page(title: str, content: str, *, live: str | None = None, status: str | None = None
         ) -> str:
    attrs = f' data-live="{e(live)}"' if live else ""
    attrs += f' data-status="{e(status)}"' if status else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{e(title)} · bisect-task</title><style>{CSS}</style></head>"
        f"<body{attrs}><header class=top><a class=brand href=/dashboard>bisect-task</a>"
        "<nav><a href=/dashboard>Tasks</a><a href=/api/v1/openapi.json>API</a></nav>"
        f"<span id=live-state></span></header><main>{content}</main>"
        f"<script>{JS}</script></body></html>")


def login_page(next_path: str, error: str | None) -> str:
    problem = f"<p class=error>{e(error)}</p>" if error else ""
    return page("Sign in", (
        "<h1>Sign in</h1><p class=sub>This dashboard needs an API token to read tasks.</p>"
        f"{problem}<form class=filters method=post action=/dashboard/login>"
        f'<input type=hidden name=next value="{e(next_path)}">'
        "<label>Token<input type=password name=token autocomplete=current-password "
        "required></label><button type=submit>Sign in</button></form>"))


def badge(status: str, prefix: str = "s") -> str:
    return f'<span class="badge {prefix}-{e(status)}">{e(status)}</span>'


def href(path: str, query: Mapping[str, str | None]) -> str:
    params = {k: v for k, v in query.items() if v}
    return e(path + ("?" + urlencode(params) if params else ""))


def task_name(task: Task) -> str:
    return task.name or f"{task.suite or task.project or 'task'}: {task.error_id}"


def counts_html(counts: Mapping[str, int], active: str | None) -> str:
    cards = [f'<a class="count{" on" if active is None else ""}" href=/dashboard>'
             f"<b>{sum(counts.values())}</b><span>all</span></a>"]
    for status in TaskStatus:
        on = " on" if active == status.value else ""
        cards.append(f'<a class="count s-{status.value}{on}" '
                     f'href="{href("/dashboard", {"status": status.value})}">'
                     f"<b>{counts.get(status.value, 0)}</b><span>{status.value}</span></a>")
    return "".join(cards)


def task_row(task: Task) -> str:
    link = f"/dashboard/tasks/{task.id}"
    step = step_text(task.current_step, task.steps_estimate, task.candidates_left)
    group = (f'<a class=mono href="{href("/dashboard", {"group": task.group_key})}" '
             f'title="all tasks of this error id and repository">{e(task.group_key[:8])}</a>'
             if task.group_key else "-")
    cells = (
        f'<td class=wrap><a href="{link}">{e(task_name(task))}</a></td>',
        f"<td>{e(task.suite or '-')}</td>",
        f"<td class='wrap mono'>{e(task.error_id)}</td>",
        f"<td>{badge(task.status.value)}</td>",
        f"<td class=num>{task.priority}</td>",
        f"<td class=num>{e(format_time(task.start_time))}</td>",
        f"<td class=num>{e(format_duration(run_seconds(task.start_time, task.end_time)))}</td>",
        f"<td class=num>{e(step)}</td>",
        f"<td>{group}</td>",
    )
    return "<tr>" + "".join(cell.replace("<td", f'<td data-label="{label}"', 1)
                            for label, cell in zip(LABELS, cells, strict=True)) + "</tr>"


def rows_html(tasks: Iterable[Task]) -> str:
    rows = "".join(task_row(t) for t in tasks)
    return rows or f'<tr><td colspan={len(LABELS)} class=empty>No tasks match.</td></tr>'


def list_page(*, tasks: list[Task], counts: Mapping[str, int], query: Mapping[str, str],
              next_cursor: str | None, live: str, error: str | None = None) -> str:
    status = query.get("status") or None
    options = "".join(f'<option value="{s.value}"{" selected" if s.value == status else ""}>'
                      f"{s.value}</option>" for s in TaskStatus)
    filters = (
        "<form class=filters method=get action=/dashboard>"
        f"<label>Status<select name=status><option value=''>any</option>{options}</select></label>"
        f"<label>Suite<input name=suite value=\"{e(query.get('suite', ''))}\"></label>"
        f"<label>Error id<input name=error_id value=\"{e(query.get('error_id', ''))}\">"
        "</label>"
        f"<label>Group<input name=group size=16 value=\"{e(query.get('group', ''))}\"></label>"
        "<button type=submit>Filter</button><a href=/dashboard>clear</a></form>")
    head = "".join(f"<th>{label}</th>" for label in LABELS)
    pager = ['<a href="' + href("/dashboard", {k: v for k, v in query.items()
                                              if k != "cursor"}) + '">newest</a>']
    if next_cursor:
        pager.append('<a href="' + href("/dashboard", {**query, "cursor": next_cursor})
                     + '">older &rarr;</a>')
    problem = f"<div class=error>{e(error)}</div>" if error else ""
    content = (
        f"<h1>Bisection tasks</h1><div class=sub>newest first</div>{problem}"
        f"<div class=counts id=live-counts>{counts_html(counts, status)}</div>{filters}"
        f"<div class=scroll><table class=cards><thead><tr>{head}</tr></thead>"
        f"<tbody id=live-rows>{rows_html(tasks)}</tbody></table></div>"
        f"<div class=pager>{''.join(pager)}</div>")
    return page("Tasks", content, live=live)


def _dl(items: Iterable[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _repo_link(url: str | None) -> str:
    if url and url.startswith(("https://", "http://")):
        return f'<a href="{e(url)}" rel=noreferrer>{e(url)}</a>'
    return e(url or "-")


def summary_html(task: Task, tested: int) -> str:
    """The live part of the task page: status, progress and times."""
    items = [("Status", badge(task.status.value)),
             ("Step", e(step_text(task.current_step, task.steps_estimate,
                                  task.candidates_left))),
             ("Tested", f"{tested} commit{'' if tested == 1 else 's'}")]
    if task.steps_estimate and not task.status.is_final:
        done = min(100, round(100 * task.current_step / max(task.steps_estimate, 1)))
        items.append(("Progress", f"<div class=bar><i style='width:{done}%'></i></div>"))
    items += [("Created", e(format_time(task.created_at))),
              ("Started", e(format_time(task.start_time))),
              ("Run time", e(format_duration(run_seconds(task.start_time, task.end_time)))),
              ("Claims", str(task.claims))]
    if task.attempts or task.retry_count:
        items.append(("Lost / retried", f"{task.attempts} / {task.retry_count}"))
    if task.owner and task.status is TaskStatus.PROCESSING:
        items.append(("Consumer", f"<span class=mono>{e(task.owner)}</span>"))
    if task.last_error:
        items.append(("Last error", e(task.last_error)))
    return _dl(items)


_WRAP = {"Commit": "wrap", "Result root": "wrap"}


def timeline_html(steps: list[Step]) -> str:
    if not steps:
        return "<tr><td colspan=7 class=empty>No commit tested yet.</td></tr>"
    several = len({s.attempt for s in steps}) > 1
    rows = []
    for number, step in enumerate(steps, 1):
        runs = f"{step.runs}" + (f" ({step.bad_runs} bad)" if step.bad_runs else "")
        detail = f"<div class=detail>{e(step.detail[:500])}</div>" if step.detail else ""
        cells = (
            ("#", f"{number}" + (f" <span class=detail>try {step.attempt}</span>"
                                 if several else "")),
            ("Commit", f'<span class=mono title="{e(step.commit)}">{e(short(step.commit))}'
                       f"</span>{detail}"),
            ("Verdict", badge(step.verdict.value, "v")),
            ("Runs", e(runs)),
            ("Job", f"<span class=mono>{e(step.job_id or '-')}</span>"
                    + (" <span class=detail>reused</span>" if step.reused else "")),
            ("Duration", e(format_duration(step.duration_ms / 1000 if step.duration_ms
                                           else None))),
            ("Result root", f"<span class=mono>{e(step.result_root or '-')}</span>"),
        )
        rows.append("<tr>" + "".join(
            f'<td data-label="{label}" class="{_WRAP.get(label, "num")}"><div>{value}</div></td>'
            for label, value in cells) + "</tr>")
    return "".join(rows)


def result_html(task: Task) -> str:
    result = result_of(task)
    commit = e(task.bad_commit or "-")
    items = [("First bad commit", f"<span class=mono>{commit}</span>")]
    for key, label in (("subject", "Subject"), ("author", "Author"), ("date", "Date")):
        if result.get(key):
            items.append((label, e(result[key])))
    verification = e(task.verification or "-")
    if result.get("verification_detail"):
        verification += f"<div class=detail>{e(result['verification_detail'])}</div>"
    items += [("Confidence", e(confidence_text(task.confidence))),
              ("Verification", verification)]
    candidates = result.get("candidates")
    if isinstance(candidates, list) and len(candidates) > 1:
        items.append(("Candidates", e(" ".join(short(str(c)) for c in candidates[:20]))))
    if task.first_bad_id:
        items.append(("First bad job", f"<span class=mono>{e(task.first_bad_id)}</span>"))
    if task.first_result_root:
        items.append(("Result root", f"<span class=mono>{e(task.first_result_root)}</span>"))
    items.append(("HEAD", e(head_text(result.get("head")) or "not checked")))
    return _dl(items)


def task_page(task: Task, steps: list[Step], report: str | None) -> str:
    facts = [("Error id", f"<span class=mono>{e(task.error_id)}</span>"),
             ("Bad job", f"<span class=mono>{e(task.bad_job_id)}</span>"),
             ("Suite", e(task.suite or "-")), ("Project", e(task.project or "-")),
             ("Repository", _repo_link(task.git_url))]
    branch = branch_of(task)
    if branch:
        facts.append(("Branch", e(branch)))
    good = short(task.good_commit) if task.good_commit else "(searched)"
    facts += [("Range", f"<span class=mono>{e(good)}..{e(short(task.known_bad_commit))}</span>"),
              ("Known bad", f"<span class=mono>{e(task.known_bad_commit or '-')}</span>"),
              ("Good", f"<span class=mono>{e(task.good_commit or '(searched)')}</span>"),
              ("Tester", e(task.tester or "-")), ("Priority", str(task.priority)),
              ("Group", f'<a class=mono href="{href("/dashboard", {"group": task.group_key})}">'
                        f"{e(task.group_key)}</a>" if task.group_key else "-")]
    sections = [
        f"<h1>{e(task_name(task))}</h1>"
        f"<div class=sub>task <span class=mono>{task.id}</span> · source {e(task.source or '-')}"
        "</div>",
        "<div class=grid>"
        f"<div class=card><h2 style='margin-top:0'>Progress</h2>"
        f"<div id=live-summary>{summary_html(task, len(steps))}</div></div>"
        f"<div class=card><h2 style='margin-top:0'>Task</h2>{_dl(facts)}</div></div>",
    ]
    if task.status is TaskStatus.COMPLETED:
        sections.append(f"<h2>Result</h2><div class=card>{result_html(task)}</div>")
    sections.append(
        "<h2>Timeline</h2><div class=scroll><table class=cards><thead><tr>"
        + "".join(f"<th>{h}</th>" for h in ("#", "Commit", "Verdict", "Runs", "Job",
                                            "Duration", "Result root"))
        + f"</tr></thead><tbody id=live-timeline>{timeline_html(steps)}</tbody></table></div>")
    if report is not None:
        sections.append(f"<h2>Report <a class=detail href=/api/v1/tasks/{task.id}/report>"
                        f"plain text</a></h2><pre class=report>{e(report)}</pre>")
    live = None if task.status.is_final else f"/dashboard/tasks/{task.id}/live"
    return page(task_name(task), "".join(sections), live=live, status=task.status.value)


def message_page(title: str, message: str) -> str:
    return page(title, f"<h1>{e(title)}</h1><div class=error>{e(message)}</div>"
                       "<a href=/dashboard>&larr; all tasks</a>")
