// Script: /static/app.js, the only script of the web admin (no CDN, no framework, no build
// step). The pages work without it; it adds
// - times in the viewer's time zone (the server writes UTC);
// - custom time ranges in local time;
// - live updates: an EventSource on the page's `data-live` stream replaces the parts that
//   changed (Live.swift), and reloads into the sign-in page when the session ended;
// - charts: a hover read-out (value, time, sequence number of the nearest reading) and
//   drag-to-zoom (the dragged span becomes the page's from/to).
// It only sets styles through the CSSOM (`el.style.left = …`), which the page's
// Content-Security-Policy allows; it injects no markup but the server's own parts.
package enum Script {
    package static let source = #"""
    // Fieldlog web admin: small conveniences on top of server-rendered pages.
    (function(){
      "use strict";
      var tz = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
      var full = new Intl.DateTimeFormat(undefined,{year:"numeric",month:"short",day:"numeric",hour:"2-digit",minute:"2-digit",second:"2-digit"});
      var hm = new Intl.DateTimeFormat(undefined,{hour:"2-digit",minute:"2-digit"});
      var dhm = new Intl.DateTimeFormat(undefined,{month:"short",day:"numeric",hour:"2-digit",minute:"2-digit"});
      var hms = new Intl.DateTimeFormat(undefined,{hour:"numeric",minute:"2-digit",second:"2-digit"});
      function ago(ms){var s=Math.round((Date.now()-ms)/1000); if(s<0)s=0;
        if(s<60)return s+" s ago"; if(s<3600)return Math.floor(s/60)+" min ago"; if(s<86400)return Math.floor(s/3600)+" h ago"; return Math.floor(s/86400)+" d ago";}
      function localize(root){
        root.querySelectorAll("time[datetime]").forEach(function(t){
          var d=new Date(t.getAttribute("datetime")); if(isNaN(d))return;
          t.title=full.format(d)+" ("+d.toISOString()+")";
          t.textContent = t.hasAttribute("data-relative") ? ago(d.getTime()) : full.format(d);
        });
        root.querySelectorAll("text[data-ms]").forEach(function(t){
          var ms=+t.getAttribute("data-ms"), span=+t.getAttribute("data-span");
          t.textContent=(span>86400000?dhm:span<900000?hms:hm).format(new Date(ms));
        });
        root.querySelectorAll(".tzname").forEach(function(e){e.textContent=tz;});
        thinAxes(root);
      }
      // Time labels that would overlap their left neighbour (a narrow chart) are hidden.
      function thinAxes(root){
        root.querySelectorAll("svg.xaxis").forEach(function(axis){
          var right=-Infinity;
          axis.querySelectorAll("text").forEach(function(t){
            t.style.visibility="";
            var r=t.getBoundingClientRect();
            if(r.width===0)return;
            if(r.left<right+8){t.style.visibility="hidden";} else {right=r.right;}
          });
        });
      }
      function pad(n){return (n<10?"0":"")+n;}
      function toLocalInput(ms){var d=new Date(ms);return d.getFullYear()+"-"+pad(d.getMonth()+1)+"-"+pad(d.getDate())+"T"+pad(d.getHours())+":"+pad(d.getMinutes())+":"+pad(d.getSeconds());}
      function customRange(){
        document.querySelectorAll("form.custom-range").forEach(function(f){
          var fl=f.querySelector("[name=fromLocal]"), tl=f.querySelector("[name=toLocal]");
          if(!fl||!tl)return;
          fl.value=toLocalInput(+fl.getAttribute("data-ms")); tl.value=toLocalInput(+tl.getAttribute("data-ms"));
          f.addEventListener("submit",function(){
            var a=new Date(fl.value), b=new Date(tl.value);
            if(!isNaN(a))f.querySelector("[name=from]").value=a.getTime();
            if(!isNaN(b))f.querySelector("[name=to]").value=b.getTime();
            fl.disabled=true; tl.disabled=true;
          });
        });
      }

      // Live updates (server-sent events).
      function live(){
        var url=document.body.getAttribute("data-live");
        if(!url||!window.EventSource)return;
        var updates=0, es=new EventSource(url);
        es.addEventListener("open",function(){document.body.setAttribute("data-live-state","open");});
        es.addEventListener("error",function(){document.body.setAttribute("data-live-state","reconnecting");});
        es.addEventListener("part",function(e){
          var p; try{p=JSON.parse(e.data);}catch(x){return;}
          var el=document.getElementById(p.id); if(!el)return;
          el.innerHTML=p.html; localize(el);
          updates++; document.body.setAttribute("data-live-updates",String(updates));
        });
        es.addEventListener("signedout",function(){es.close();location.reload();});
      }

      // Charts: hover read-out and drag-to-zoom.
      function chart(c){
        var box=c.querySelector(".plotbox"); if(!box)return;
        var from=+c.getAttribute("data-from"), to=+c.getAttribute("data-to");
        var lo=+c.getAttribute("data-lo"), hi=+c.getAttribute("data-hi");
        var padPx=+c.getAttribute("data-pad"), h=+c.getAttribute("data-height");
        var raw=c.getAttribute("data-points")||"", ms=[], val=[], seq=[];
        raw.split(";").forEach(function(s){ if(!s)return; var p=s.split(","); ms.push(from+(+p[0])); val.push(p[1]); seq.push(p[2]); });
        function el(cls){var e=document.createElement("div"); e.className=cls; e.hidden=true; box.appendChild(e); return e;}
        var guide=el("guide"), dot=el("hoverdot"), tip=el("tip"), sel=el("selection");
        function msAt(x){var w=box.clientWidth||1; return from+Math.max(0,Math.min(1,x/w))*(to-from);}
        function xOf(t){return (t-from)/(to-from)*box.clientWidth;}
        function nearest(t){var a=0,b=ms.length-1; if(b<0)return -1;
          while(b-a>1){var m=(a+b)>>1; if(ms[m]<t)a=m; else b=m;}
          return Math.abs(ms[a]-t)<=Math.abs(ms[b]-t)?a:b;}
        function hide(){guide.hidden=dot.hidden=tip.hidden=true;}
        var start=null;
        function localX(e){return e.clientX-box.getBoundingClientRect().left;}
        box.addEventListener("pointermove",function(e){
          var x=localX(e);
          if(start!==null){ var a=Math.min(start,x), b=Math.max(start,x); sel.hidden=false; sel.style.left=a+"px"; sel.style.width=(b-a)+"px"; hide(); return; }
          var i=nearest(msAt(x)); if(i<0){hide();return;}
          var px=xOf(ms[i]), v=+val[i], py=padPx+(1-(v-lo)/((hi-lo)||1))*(h-2*padPx);
          guide.hidden=dot.hidden=tip.hidden=false;
          guide.style.left=px+"px"; dot.style.left=px+"px"; dot.style.top=py+"px";
          tip.innerHTML=""; var strong=document.createElement("strong"); strong.textContent=val[i]; tip.appendChild(strong);
          tip.appendChild(document.createTextNode(" · "+full.format(new Date(ms[i]))+" · seq "+seq[i]));
          var w=box.clientWidth, tw=tip.offsetWidth; tip.style.left=Math.max(0,Math.min(w-tw,px+10>w-tw?px-tw-10:px+10))+"px";
        });
        box.addEventListener("pointerleave",function(){ if(start===null)hide(); });
        box.addEventListener("pointerdown",function(e){ if(e.button!==0)return; start=localX(e); box.setPointerCapture(e.pointerId); });
        box.addEventListener("pointerup",function(e){
          if(start===null)return; var a=start, b=localX(e); start=null; sel.hidden=true;
          if(Math.abs(b-a)<6)return;
          var t0=Math.round(msAt(Math.min(a,b))), t1=Math.round(msAt(Math.max(a,b)));
          if(t1-t0<1000)t1=t0+1000;
          location.href=location.pathname+"?from="+t0+"&to="+t1;
        });
        box.addEventListener("pointercancel",function(){start=null; sel.hidden=true; hide();});
      }

      document.addEventListener("DOMContentLoaded",function(){
        localize(document); customRange(); live();
        setInterval(function(){ if(!document.hidden)localize(document); },15000);
        window.addEventListener("resize",function(){thinAxes(document);});
        document.querySelectorAll(".chart").forEach(chart);
      });
    })();
    """#
}
