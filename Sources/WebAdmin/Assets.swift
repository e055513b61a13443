// Assets: the stylesheet, script (Script.swift) and icon of the web admin, shipped inside the
// binary (no CDN: plants often have no internet, and one file to deploy is simpler).
import Audit
import BackendStore
import Hummingbird
import NIOCore

package enum Assets {
    package static func response(name: String) throws -> Response {
        let (type, text): (String, String)
        switch name {
        case "app.css": (type, text) = ("text/css; charset=utf-8", css)
        case "app.js": (type, text) = ("text/javascript; charset=utf-8", Script.source)
        case "icon.svg": (type, text) = ("image/svg+xml", icon)
        default: throw HTTPError(.notFound, message: "no asset \"\(name)\"")
        }
        return Response(status: .ok, headers: [.contentType: type, .cacheControl: "max-age=300"],
                        body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    package static let icon = #"""
    <svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="7" fill="#0f5d8c"/><path d="M5 21l6-7 5 5 5-9 6 6" fill="none" stroke="#fff" stroke-width="3" stroke-linecap="round" stroke-linejoin="round"/></svg>
    """#

    package static let css = #"""
    :root{--bg:#f3f5f8;--card:#fff;--ink:#17202b;--muted:#5b6b7c;--line:#dde3ea;--brand:#0f5d8c;--brand2:#0b4a70;
    --ok:#177a3c;--okbg:#e3f4e9;--bad:#b42318;--badbg:#fde8e6;--warn:#8a5a00;--warnbg:#fff3d6;--info:#1d5fa8;--infobg:#e4eefb;--off:#56606b;--offbg:#eceff3}
    *{box-sizing:border-box}
    html{font-size:16px;-webkit-text-size-adjust:100%}
    body{margin:0;background:var(--bg);color:var(--ink);font:1rem/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif}
    a{color:var(--brand)} a:hover{color:var(--brand2)}
    code{font:.9em ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#eef2f6;padding:.05em .3em;border-radius:4px;overflow-wrap:anywhere}
    header.top{display:flex;align-items:center;gap:.5rem 1rem;flex-wrap:wrap;background:#12202e;color:#fff;padding:.55rem 1rem}
    .brand{display:flex;align-items:center;gap:.5rem;color:#fff;text-decoration:none;font-weight:700;font-size:1.1rem;letter-spacing:.01em}
    .nav{display:flex;gap:.25rem;flex-wrap:wrap}
    .nav a{color:#c9d6e3;text-decoration:none;padding:.35rem .7rem;border-radius:6px;font-weight:600}
    .nav a:hover{background:#1f3346;color:#fff} .nav a.on{background:#24435f;color:#fff}
    .signout{margin-left:auto;display:flex;align-items:center;gap:.6rem}
    .user{color:#c9d6e3;font-size:.9rem;text-decoration:none} .user:hover{color:#fff} .user .role{font-size:.75rem;border:1px solid #3d5266;border-radius:999px;padding:0 .45rem;margin-left:.2rem}
    main{max-width:1280px;margin:0 auto;padding:1rem}
    footer{color:var(--muted);font-size:.8rem;text-align:center;padding:1.5rem}
    h1{font-size:1.5rem;margin:.2rem 0} h2{font-size:1.15rem;margin:0 0 .5rem} h3{font-size:1rem;margin:.4rem 0}
    h1 a.muted{text-decoration:none}
    .pagehead{display:flex;align-items:baseline;gap:.3rem 1rem;flex-wrap:wrap;margin:.25rem 0 1rem}
    .sectionhead{display:flex;align-items:center;gap:.5rem 1rem;flex-wrap:wrap;justify-content:space-between;margin-bottom:.75rem}
    .sectionhead h2{margin:0}
    .card{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:1rem;margin-bottom:1rem;box-shadow:0 1px 2px rgba(16,24,40,.04)}
    .muted{color:var(--muted)} .small{font-size:.85rem}
    .n{font-variant-numeric:tabular-nums;text-align:right}
    .badge{display:inline-block;padding:.12rem .55rem;border-radius:999px;font-size:.82rem;font-weight:650;white-space:nowrap;text-decoration:none;border:1px solid transparent}
    .badge.ok{background:var(--ok);color:#fff} .badge.ok.soft{background:var(--okbg);color:var(--ok)}
    .badge.bad{background:var(--bad);color:#fff} .badge.warn{background:var(--warnbg);color:var(--warn);border-color:#f1d08a}
    .badge.warn.soft{background:var(--warnbg)} .badge.off{background:var(--offbg);color:var(--off);border-color:#cfd6de}
    .badge.info{background:var(--infobg);color:var(--info)} .badge.info.soft{background:var(--infobg)}
    .pulse{animation:pulse 1.4s ease-in-out infinite} @keyframes pulse{50%{opacity:.55}}
    .alert{padding:.7rem .9rem;border-radius:8px;margin:.5rem 0 1rem;border:1px solid}
    .alert.bad{background:var(--badbg);border-color:#f4b9b2;color:#7a1a12} .alert.good{background:var(--okbg);border-color:#a9dcb9;color:#11532a}
    .alert.info{background:var(--infobg);border-color:#b9d0f0;color:#173f6d}
    .tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(132px,1fr));gap:.6rem;margin-bottom:1rem}
    .tile{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:.7rem .9rem;display:flex;flex-direction:column;color:var(--ink);text-decoration:none}
    a.tile:hover{border-color:#9cc3e6;color:var(--ink)} .tile.on{border-color:var(--brand);box-shadow:inset 0 0 0 2px var(--brand)}
    .tile .big{font-size:1.7rem;font-weight:750;font-variant-numeric:tabular-nums;line-height:1.2} .tile span:last-child{color:var(--muted);font-size:.88rem}
    .tile.ok .big{color:var(--ok)} .tile.bad .big{color:var(--bad)} .tile.warn .big{color:var(--warn)} .tile.off .big{color:var(--off)} .tile.info .big{color:var(--info)}
    form.search{display:flex;gap:.6rem;flex-wrap:wrap;align-items:end;padding:.75rem 1rem}
    form.search .grow{flex:1 1 220px} form.search .grow input{width:100%}
    table.grid{width:100%;border-collapse:collapse;background:var(--card);border:1px solid var(--line);border-radius:12px;overflow:hidden}
    .grid th,.grid td{padding:.55rem .7rem;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
    .grid th{background:#f7f9fb;font-size:.8rem;text-transform:uppercase;letter-spacing:.04em;color:var(--muted);white-space:nowrap}
    .grid th a{color:inherit;text-decoration:none} .grid th[aria-sort] a{color:var(--ink)}
    .grid tbody tr:hover{background:#f8fafc} .grid tr.has-gaps td:first-child{box-shadow:inset 4px 0 0 var(--bad)}
    .grid td.empty,.empty{color:var(--muted);text-align:center;padding:1.5rem}
    .scroll-x{overflow-x:auto;margin-bottom:1rem} .scroll-x table.grid{margin:0}
    .devlink{font-weight:700;font-size:1.02rem}
    .grid time,.grid code,.grid td[data-label=Device] a,.grid .badge{white-space:nowrap}
    .grid td[data-label=Status] .badge{margin:0 .2rem .15rem 0}
    .facts{display:grid;grid-template-columns:repeat(auto-fit,minmax(140px,1fr));gap:.9rem}
    .fact{display:flex;flex-direction:column;align-items:flex-start;gap:.25rem} .fact .label{font-size:.78rem;text-transform:uppercase;letter-spacing:.05em;color:var(--muted)}
    .fact .n{text-align:left;font-size:1.15rem;font-weight:650}
    .ranges{display:flex;gap:.35rem;flex-wrap:wrap}
    .chip{padding:.3rem .75rem;border:1px solid var(--line);border-radius:999px;text-decoration:none;color:var(--ink);font-weight:600;font-size:.9rem;background:#fff}
    .chip.on{background:var(--brand);border-color:var(--brand);color:#fff}
    .custom-range{display:flex;gap:.6rem;flex-wrap:wrap;align-items:end;margin-bottom:.4rem}
    label{display:flex;flex-direction:column;gap:.2rem;font-size:.85rem;color:var(--muted);font-weight:600}
    label.check{flex-direction:row;align-items:center;gap:.3rem;font-weight:500}
    input,select{font:inherit;color:var(--ink);padding:.45rem .55rem;border:1px solid #c5cfd9;border-radius:8px;background:#fff;min-height:2.5rem}
    input[type=checkbox]{min-height:0}
    input:focus,select:focus,.btn:focus{outline:3px solid #9cc3e6;outline-offset:1px}
    .btn{display:inline-flex;align-items:center;justify-content:center;gap:.35rem;font:inherit;font-weight:650;padding:.5rem 1rem;min-height:2.5rem;border-radius:8px;border:1px solid #c5cfd9;background:#fff;color:var(--ink);cursor:pointer;text-decoration:none;white-space:nowrap}
    .btn:hover{background:#f2f5f8} .btn.small{padding:.3rem .7rem;min-height:2.1rem;font-size:.9rem} .btn:disabled{opacity:.5;cursor:default}
    .btn.primary{background:var(--ok);border-color:var(--ok);color:#fff} .btn.primary:hover{background:#12632f}
    .btn.stop{background:#c2410c;border-color:#c2410c;color:#fff} .btn.stop:hover{background:#a3370a}
    .btn.danger{background:#fff;border-color:var(--bad);color:var(--bad)} .btn.danger:hover{background:var(--badbg)}
    .btn.ghost{background:transparent} header .btn.ghost{color:#fff;border-color:#3d5266} header .btn.ghost:hover{background:#1f3346}
    .btn.wide{width:100%;margin-top:.5rem}
    .legend{display:flex;flex-wrap:wrap;gap:.4rem 1rem;list-style:none;padding:0;margin:.3rem 0 .8rem;font-size:.85rem;color:var(--muted)}
    .legend li{display:flex;align-items:center;gap:.4rem} .sw{display:inline-block;width:18px;height:12px;border-radius:3px}
    .sw.line{height:3px;background:var(--brand)} .sw.nodata{background:repeating-linear-gradient(45deg,#dfe4ea 0 3px,#f4f6f8 3px 6px);border:1px solid #cfd6de}
    .sw.missing{background:#f8c9c3;border:1px solid #e08b80} .sw.lost{background:#fbe3a6;border:1px solid #e0b449} .sw.offline{background:#c4ccd5}
    .charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,520px),1fr));gap:1rem}
    .chartcard{margin:0;padding:.8rem}
    .chartcard figcaption{display:flex;align-items:baseline;gap:.6rem;flex-wrap:wrap}
    .latest{font-size:1.4rem;font-weight:750;font-variant-numeric:tabular-nums;color:var(--brand2)}
    .chart{display:grid;grid-template-columns:auto 1fr;user-select:none;-webkit-user-select:none}
    .chart svg{display:block;overflow:visible} .chart text{font-size:12px;fill:#5b6b7c;font-family:system-ui,sans-serif}
    .plotbox{position:relative;height:220px;touch-action:pan-y;cursor:crosshair}
    svg.plot{width:100%;height:220px}
    svg.xaxis{width:100%}
    .plot .plotbg{fill:#fbfcfd;stroke:#e3e8ee;vector-effect:non-scaling-stroke} .plot .grid{stroke:#e6ebf0;stroke-width:1;vector-effect:non-scaling-stroke}
    .plot .line{fill:none;stroke:var(--brand);stroke-width:2;vector-effect:non-scaling-stroke;stroke-linejoin:round}
    .plot .pt{stroke:var(--brand);stroke-width:5;stroke-linecap:round;vector-effect:non-scaling-stroke}
    .plot .band.nodata{fill:#e9edf1} .plot .band.missing{fill:#f8c9c3;opacity:.9}
    .plot .band.lost{fill:#fbe3a6;opacity:.9} .plot .band.offline{fill:#c4ccd5;opacity:.7}
    .chart-empty{position:absolute;inset:0;display:flex;align-items:center;justify-content:center;margin:0;color:#8391a0;font-size:.95rem}
    .chart .guide{position:absolute;top:0;bottom:0;width:1px;background:#17202b;opacity:.45;pointer-events:none}
    .chart .hoverdot{position:absolute;width:10px;height:10px;margin:-5px 0 0 -5px;border-radius:50%;background:var(--brand);border:2px solid #fff;pointer-events:none}
    .chart .tip{position:absolute;top:4px;background:#12202e;color:#fff;font-size:.82rem;padding:.3rem .5rem;border-radius:6px;white-space:nowrap;pointer-events:none;z-index:2}
    .chart .tip strong{font-size:.95rem}
    .chart .selection{position:absolute;top:0;bottom:0;background:rgba(15,93,140,.18);border:1px solid rgba(15,93,140,.6);pointer-events:none}
    .ctl-row{display:flex;flex-wrap:wrap;gap:.6rem;margin-bottom:1rem;align-items:center} .ctl-row .push{margin-left:auto}
    .reboot-off{max-width:26rem;margin:0}
    .btn.big{min-height:3rem;padding:.6rem 1.2rem;font-size:1.02rem}
    .ctl-grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,270px),1fr));gap:.75rem;margin-bottom:1.2rem;align-items:start}
    .ctl{display:flex;flex-direction:column;gap:.6rem;background:#f7f9fb;border:1px solid var(--line);border-radius:10px;padding:.75rem}
    .ctl h4{margin:0;font-size:.95rem} .ctl .fields{display:flex;flex-wrap:wrap;gap:.5rem;flex:1}
    .ctl .fields label{flex:1 1 100px} .ctl .fields label.wide{flex-basis:100%} .ctl .fields input,.ctl .fields select{width:100%} .ctl>.btn{align-self:flex-start}
    .settings{display:flex;flex-direction:column;gap:.5rem}
    .setting{display:flex;flex-wrap:wrap;align-items:center;gap:.35rem} .setting code{flex:1 1 100%}
    .setting form{display:flex;gap:.35rem;align-items:center} .setting input,.setting select{min-height:2.1rem;padding:.25rem .45rem;width:7.5rem}
    .commands .answer{max-width:28rem;word-break:break-word} details{display:inline} details code{display:block;margin-top:.3rem;white-space:pre-wrap}
    .payload{white-space:pre-wrap;word-break:break-all;max-width:36rem;max-height:16rem;overflow:auto;background:#f4f6f8;border-radius:6px;padding:.5rem;font-size:.8rem;margin:.3rem 0 0}
    td.detail{max-width:26rem;overflow-wrap:anywhere}
    .pager{display:flex;gap:.6rem;align-items:center;flex-wrap:wrap;margin-bottom:1rem}
    ul.issues{list-style:none;margin:0;padding:0;display:flex;flex-direction:column;gap:.35rem} ul.issues li{display:flex;gap:.5rem;align-items:center;flex-wrap:wrap}
    ul.issues form,.inline-form{display:inline-flex;gap:.35rem;align-items:center;margin:.1rem .35rem .1rem 0}
    .inline-form input,.inline-form select{min-height:2.1rem;padding:.25rem .45rem}
    td.actions{display:flex;flex-wrap:wrap;gap:.3rem}
    .addform{display:flex;gap:.6rem;flex-wrap:wrap;align-items:end}
    .signin{max-width:400px;margin:8vh auto} .signin form{display:flex;flex-direction:column;gap:.8rem}
    .confirm{max-width:560px;margin:5vh auto} .row{display:flex;gap:.75rem;flex-wrap:wrap}
    @media (max-width:760px){
      main{padding:.6rem} h1{font-size:1.25rem}
      header.top{padding:.45rem .6rem;gap:.35rem .5rem} .nav a{padding:.3rem .5rem;font-size:.92rem}
      .signout{order:2} .nav{order:3;flex-basis:100%;flex-wrap:nowrap;overflow-x:auto}
      .btn.small.ghost{min-height:1.9rem}
      table.grid thead{display:none} table.grid,table.grid tbody,table.grid tr{display:block;width:100%}
      table.grid tr{border-bottom:1px solid var(--line);padding:.45rem 0}
      table.grid td{display:flex;width:100%;border:0;padding:.25rem .8rem;justify-content:space-between;align-items:baseline;gap:1rem;text-align:right}
      table.grid td::before{content:attr(data-label);flex:0 0 auto;color:var(--muted);font-size:.8rem;font-weight:600;text-align:left}
      table.grid td.empty{display:block;text-align:center} table.grid td.empty::before{content:none}
      table.grid td>.cell{min-width:0;overflow-wrap:anywhere} table.grid td>details{min-width:0}
      .commands .answer{max-width:none}
      table.grid td:first-child{font-size:1.05rem}
      table.grid td.actions{justify-content:flex-end} table.grid td.actions::before{flex-basis:100%}
      .scroll-x{overflow-x:visible}
      .ctl-row .push{margin-left:0} .ctl-row form,.ctl-row .btn{flex:1 1 auto;width:100%}
      .signout .user{display:none}
      .tiles{grid-template-columns:repeat(2,1fr)}
      form.search label{flex:1 1 100%} form.search input,form.search select{width:100%}
      .tile .big{font-size:1.4rem}
    }
    """#
}
