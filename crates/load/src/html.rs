//! `index.html`: the report's headline figures and SVG line charts of the timeline.

use crate::report::{Report, Sample};

const W: f64 = 640.0;
const H: f64 = 180.0;
const PAD: f64 = 40.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A named, coloured series of the timeline.
type Series<'a> = (&'a str, &'a str, fn(&Sample) -> Option<f64>);

/// One chart: a polyline per series over `t`.
fn chart(title: &str, samples: &[Sample], series: &[Series]) -> String {
    let t_max = samples.last().map_or(1.0, |s| s.t.max(1.0));
    let y_max = samples
        .iter()
        .flat_map(|s| series.iter().filter_map(move |(_, _, f)| f(s)))
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.1;
    let x = |t: f64| PAD + t / t_max * (W - 2.0 * PAD);
    let y = |v: f64| H - PAD / 2.0 - v / y_max * (H - PAD);
    let mut svg = format!(
        "<h3>{}</h3><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         style=\"background:#fafafa;border:1px solid #ddd\">",
        esc(title)
    );
    svg += &format!(
        "<line x1=\"{PAD}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#999\"/>\
         <text x=\"2\" y=\"{top}\" font-size=\"10\">{ymax:.1}</text>\
         <text x=\"2\" y=\"{b}\" font-size=\"10\">0</text>\
         <text x=\"{r}\" y=\"{H}\" font-size=\"10\" text-anchor=\"end\">{t_max:.0}s</text>",
        b = y(0.0),
        r = W - PAD,
        top = y(y_max / 1.1) + 4.0,
        ymax = y_max / 1.1,
    );
    for (i, (name, color, f)) in series.iter().enumerate() {
        let points: Vec<String> = samples
            .iter()
            .filter_map(|s| f(s).map(|v| format!("{:.1},{:.1}", x(s.t), y(v))))
            .collect();
        svg += &format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>\
             <text x=\"{lx}\" y=\"12\" font-size=\"11\" fill=\"{color}\">{}</text>",
            points.join(" "),
            esc(name),
            lx = PAD + i as f64 * 150.0,
        );
    }
    svg + "</svg>"
}

/// Renders the page.
pub fn render(report: &Report, table: &str) -> String {
    let tl = &report.timeline;
    let mut body = String::new();
    body += &chart(
        "Bots connected",
        tl,
        &[("connected", "#1f77b4", |s| Some(s.connected as f64))],
    );
    body += &chart(
        "Bitrate, all bots (kbit/s)",
        tl,
        &[
            ("received", "#2ca02c", |s| Some(s.in_kbps)),
            ("sent", "#ff7f0e", |s| Some(s.out_kbps)),
        ],
    );
    body += &chart(
        "Loss per interval (%)",
        tl,
        &[("loss", "#d62728", |s| Some(s.loss_percent))],
    );
    body += &chart(
        "CPU (% of one core)",
        tl,
        &[
            ("server", "#9467bd", |s| s.server_cpu_percent),
            ("bots", "#8c564b", |s| Some(s.bots_cpu_percent)),
        ],
    );
    body += &chart(
        "Server RSS (MiB)",
        tl,
        &[("rss", "#17becf", |s| s.server_rss_mb)],
    );
    body += &chart(
        "Server packets forwarded per second",
        tl,
        &[("packets out/s", "#bcbd22", |s| s.server_packets_out_per_s)],
    );
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>chorus-load {run}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}pre{{background:#f4f4f4;padding:1em}}</style>\
         </head><body><h1>chorus-load: {run}</h1><p>{url} &mdash; {result}</p><pre>{table}</pre>{body}\
         <p>Raw figures: <a href=\"report.json\">report.json</a></p></body></html>\n",
        run = esc(&report.run),
        url = esc(&report.url),
        result = if report.passed { "passed" } else { "FAILED" },
        table = esc(table),
    )
}
