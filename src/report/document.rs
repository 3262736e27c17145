//! A report as data — sections of paragraphs, tables, plots and example grids — rendered to
//! one self-contained HTML page and to a Markdown twin with the same tables. Keeping one model
//! for both is what makes the two agree.

use base64::Engine;

/// A table cell: the text shown and, for numbers, the exact value (HTML `data-value`), so that
/// readers and tests can check a rounded figure against the summary it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// What is shown.
    pub text: String,
    /// The number behind it.
    pub value: Option<f64>,
}

impl Cell {
    /// A text cell.
    pub fn text(s: impl Into<String>) -> Cell {
        Cell {
            text: s.into(),
            value: None,
        }
    }

    /// A number cell.
    pub fn number(text: impl Into<String>, value: f64) -> Cell {
        Cell {
            text: text.into(),
            value: Some(value),
        }
    }

    /// An empty cell (a metric that does not apply).
    pub fn none() -> Cell {
        Cell::text("–")
    }
}

/// A table with a header row.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Column names.
    pub headers: Vec<String>,
    /// Rows of cells, as many as headers.
    pub rows: Vec<Vec<Cell>>,
    /// HTML `class` (e.g. `summary`), used by tests and styles.
    pub class: String,
}

/// One clean-vs-attacked example.
#[derive(Debug, Clone)]
pub struct Example {
    /// Sample id and variant.
    pub caption: String,
    /// `success` or `failure` (shown and used as a CSS class).
    pub outcome: String,
    /// PNG thumbnails (absent when the images could not be read).
    pub clean_png: Option<Vec<u8>>,
    /// PNG of the attacked image.
    pub attacked_png: Option<Vec<u8>>,
    /// Top-3 on the clean image, as text lines.
    pub clean_top: Vec<String>,
    /// Top-3 on the attacked image.
    pub attacked_top: Vec<String>,
}

/// One image with its caption.
#[derive(Debug, Clone)]
pub struct Figure {
    /// What the image shows.
    pub caption: String,
    /// PNG bytes.
    pub png: Vec<u8>,
}

/// A block of content.
#[derive(Debug, Clone)]
pub enum Block {
    /// A paragraph of plain text.
    Para(String),
    /// A table.
    Table(Table),
    /// An SVG figure with a title (the SVG is inlined in HTML; Markdown names it).
    Plot {
        /// What the plot shows.
        title: String,
        /// The SVG document.
        svg: String,
    },
    /// A grid of examples.
    Examples(Vec<Example>),
    /// A grid of captioned images.
    Figures(Vec<Figure>),
    /// Preformatted text, folded away in HTML.
    Details {
        /// The summary line.
        summary: String,
        /// The text.
        text: String,
    },
}

/// A titled section; `id` is the HTML anchor.
#[derive(Debug, Clone)]
pub struct Section {
    /// Anchor (stable; tests look for it).
    pub id: String,
    /// Heading.
    pub title: String,
    /// Content.
    pub blocks: Vec<Block>,
}

/// A whole report.
#[derive(Debug, Clone)]
pub struct Document {
    /// Page title.
    pub title: String,
    /// The first line: model, dataset, n, date.
    pub first_line: String,
    /// A red banner above everything (random weights).
    pub banner: Option<String>,
    /// The sections, in order.
    pub sections: Vec<Section>,
}

const STYLE: &str =
    "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;\
max-width:1200px;padding:0 1em;color:#222}\
.banner{background:#c62828;color:#fff;font-weight:bold;padding:.8em 1em;margin:1em 0;\
border-radius:4px}\
.first-line{font-size:1.1em;font-weight:600}\
table{border-collapse:collapse;margin:1em 0;font-size:.85em}\
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}\
th{background:#f3f3f3}td[data-value]{text-align:right;font-variant-numeric:tabular-nums;\
white-space:nowrap}.scroll{overflow-x:auto}\
figure{margin:1em 0}figcaption{font-weight:600;margin-bottom:.3em}\
.examples{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:12px}\
.example{border:1px solid #ddd;border-radius:4px;padding:6px;font-size:.8em}\
.example.success{border-color:#c62828}.example.failure{border-color:#2e7d32}\
.example img{width:112px;height:112px;image-rendering:auto;margin-right:4px}\
.example ol{margin:.2em 0;padding-left:1.4em}.pair{display:flex;gap:8px}\
pre{background:#f7f7f7;padding:.6em;overflow:auto;font-size:.8em}\
nav a{margin-right:1em}\
.figures{display:grid;grid-template-columns:repeat(auto-fill,minmax(236px,1fr));gap:8px}\
.figures figure{margin:0;font-size:.75em}.figures figcaption{font-weight:400}";

/// Escapes text for HTML content and attributes.
pub fn escape(s: &str) -> String {
    html_escape::encode_double_quoted_attribute(s).into_owned()
}

fn data_uri(png: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

fn html_table(t: &Table, out: &mut String) {
    out.push_str(&format!(
        "<div class=\"scroll\"><table class=\"{}\">\n<thead><tr>",
        escape(&t.class)
    ));
    for h in &t.headers {
        out.push_str(&format!("<th>{}</th>", escape(h)));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in &t.rows {
        out.push_str("<tr>");
        for c in row {
            match c.value {
                Some(v) => out.push_str(&format!(
                    "<td data-value=\"{v:?}\">{}</td>",
                    escape(&c.text)
                )),
                None => out.push_str(&format!("<td>{}</td>", escape(&c.text))),
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table></div>\n");
}

fn html_examples(examples: &[Example], out: &mut String) {
    out.push_str("<div class=\"examples\">\n");
    for e in examples {
        out.push_str(&format!(
            "<div class=\"example {}\"><div><b>{}</b> — {}</div><div class=\"pair\">",
            escape(&e.outcome),
            escape(&e.outcome),
            escape(&e.caption)
        ));
        for (png, what, top) in [
            (&e.clean_png, "clean", &e.clean_top),
            (&e.attacked_png, "attacked", &e.attacked_top),
        ] {
            out.push_str("<div>");
            match png {
                Some(p) => out.push_str(&format!("<img alt=\"{what}\" src=\"{}\">", data_uri(p))),
                None => out.push_str(&format!("<i>{what} image unavailable</i>")),
            }
            out.push_str(&format!("<div>{what}</div><ol>"));
            for line in top {
                out.push_str(&format!("<li>{}</li>", escape(line)));
            }
            out.push_str("</ol></div>");
        }
        out.push_str("</div></div>\n");
    }
    out.push_str("</div>\n");
}

impl Document {
    /// One self-contained HTML page: inline CSS and SVG, images as data URIs, no scripts, no
    /// network.
    pub fn to_html(&self) -> String {
        let mut out = String::new();
        out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
        out.push_str(&format!(
            "<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
            escape(&self.title)
        ));
        out.push_str(&format!(
            "<p class=\"first-line\">{}</p>\n",
            escape(&self.first_line)
        ));
        if let Some(b) = &self.banner {
            out.push_str(&format!("<div class=\"banner\">{}</div>\n", escape(b)));
        }
        out.push_str(&format!("<h1>{}</h1>\n<nav>", escape(&self.title)));
        for s in &self.sections {
            out.push_str(&format!(
                "<a href=\"#{}\">{}</a>",
                escape(&s.id),
                escape(&s.title)
            ));
        }
        out.push_str("</nav>\n");
        for s in &self.sections {
            out.push_str(&format!(
                "<section id=\"{}\">\n<h2>{}</h2>\n",
                escape(&s.id),
                escape(&s.title)
            ));
            for b in &s.blocks {
                match b {
                    Block::Para(p) => out.push_str(&format!("<p>{}</p>\n", escape(p))),
                    Block::Table(t) => html_table(t, &mut out),
                    Block::Plot { title, svg } => out.push_str(&format!(
                        "<figure class=\"plot\"><figcaption>{}</figcaption>\n{}\n</figure>\n",
                        escape(title),
                        strip_xml_declaration(svg)
                    )),
                    Block::Examples(e) => html_examples(e, &mut out),
                    Block::Figures(figs) => {
                        out.push_str("<div class=\"figures\">\n");
                        for f in figs {
                            out.push_str(&format!(
                                "<figure><img alt=\"{c}\" src=\"{}\"><figcaption>{c}</figcaption></figure>\n",
                                data_uri(&f.png),
                                c = escape(&f.caption)
                            ));
                        }
                        out.push_str("</div>\n");
                    }
                    Block::Details { summary, text } => out.push_str(&format!(
                        "<details><summary>{}</summary><pre>{}</pre></details>\n",
                        escape(summary),
                        escape(text)
                    )),
                }
            }
            out.push_str("</section>\n");
        }
        out.push_str("</body>\n</html>\n");
        out
    }

    /// The Markdown twin: the same first line, banner and tables; plots and thumbnails are named
    /// (they live in the HTML).
    pub fn to_markdown(&self) -> String {
        let mut out = format!("{}\n\n", md_line(&self.first_line));
        if let Some(b) = &self.banner {
            out.push_str(&format!("> **{}**\n\n", md_line(b)));
        }
        out.push_str(&format!("# {}\n\n", md_line(&self.title)));
        for s in &self.sections {
            out.push_str(&format!("## {}\n\n", md_line(&s.title)));
            for b in &s.blocks {
                match b {
                    Block::Para(p) => out.push_str(&format!("{}\n\n", md_line(p))),
                    Block::Table(t) => {
                        md_table(t, &mut out);
                        out.push('\n');
                    }
                    Block::Plot { title, .. } => {
                        out.push_str(&format!("*Plot: {} (in report.html)*\n\n", md_line(title)))
                    }
                    Block::Examples(examples) => {
                        let t = Table {
                            headers: ["outcome", "example", "clean top-3", "attacked top-3"]
                                .map(String::from)
                                .to_vec(),
                            rows: examples
                                .iter()
                                .map(|e| {
                                    vec![
                                        Cell::text(&e.outcome),
                                        Cell::text(&e.caption),
                                        Cell::text(e.clean_top.join("; ")),
                                        Cell::text(e.attacked_top.join("; ")),
                                    ]
                                })
                                .collect(),
                            class: String::new(),
                        };
                        md_table(&t, &mut out);
                        out.push_str("\n*Thumbnails in report.html.*\n\n");
                    }
                    Block::Figures(figs) => {
                        let captions: Vec<String> =
                            figs.iter().map(|f| md_line(&f.caption)).collect();
                        out.push_str(&format!(
                            "*{} images in report.html: {}.*\n\n",
                            figs.len(),
                            captions.join("; ")
                        ));
                    }
                    Block::Details { summary, text } => {
                        out.push_str(&format!("{}:\n\n```\n{}\n```\n\n", md_line(summary), text))
                    }
                }
            }
        }
        out
    }
}

fn md_line(s: &str) -> String {
    s.replace('\n', " ")
}

fn md_cell(s: &str) -> String {
    md_line(s).replace('|', "\\|")
}

fn md_table(t: &Table, out: &mut String) {
    out.push_str(&format!(
        "| {} |\n",
        t.headers
            .iter()
            .map(|h| md_cell(h))
            .collect::<Vec<_>>()
            .join(" | ")
    ));
    out.push_str(&format!("|{}\n", "---|".repeat(t.headers.len())));
    for row in &t.rows {
        out.push_str(&format!(
            "| {} |\n",
            row.iter()
                .map(|c| md_cell(&c.text))
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }
}

/// Drops a leading `<?xml …?>` so that an SVG document can be inlined in HTML.
fn strip_xml_declaration(svg: &str) -> &str {
    let s = svg.trim_start();
    if s.starts_with("<?xml") {
        s.find("?>").map(|i| s[i + 2..].trim_start()).unwrap_or(s)
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Document {
        Document {
            title: "T <1>".into(),
            first_line: "model m, dataset d".into(),
            banner: Some("random weights".into()),
            sections: vec![Section {
                id: "summary".into(),
                title: "Summary".into(),
                blocks: vec![Block::Table(Table {
                    headers: vec!["a".into(), "b|c".into()],
                    rows: vec![vec![Cell::text("x<y"), Cell::number("12.5%", 0.125)]],
                    class: "summary".into(),
                })],
            }],
        }
    }

    #[test]
    fn html_escapes_and_keeps_values() {
        let h = doc().to_html();
        assert!(h.contains("x&lt;y"));
        assert!(h.contains("data-value=\"0.125\""));
        assert!(h.contains("class=\"banner\""));
        assert!(!h.contains("<script"));
    }

    #[test]
    fn markdown_tables_escape_pipes() {
        let m = doc().to_markdown();
        assert!(m.starts_with("model m, dataset d\n"));
        assert!(m.contains("| a | b\\|c |"));
        assert!(m.contains("| x<y | 12.5% |"));
    }

    #[test]
    fn xml_declaration_is_dropped() {
        assert_eq!(
            strip_xml_declaration("<?xml version=\"1.0\"?>\n<svg/>"),
            "<svg/>"
        );
        assert_eq!(strip_xml_declaration("<svg/>"), "<svg/>");
    }
}
