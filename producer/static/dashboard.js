(function(){
  var body=document.body, url=body.dataset.live, every=+(body.dataset.every||4000);
  // On a narrow screen the strip scrolls: bring the culprit into view, else the commit
  // under test, else the newest posterior row's likeliest commit.
  var box=document.getElementById("live-picture"), mark=box&&(box.querySelector(".culprit")||
    box.querySelector("#testing-mark")||box.querySelector(".likeliest"));
  if(mark&&box.scrollWidth>box.clientWidth){
    var r=mark.getBoundingClientRect(), b=box.getBoundingClientRect();
    box.scrollLeft+=r.left-b.left-b.width/2+r.width/2;
  }
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
      if(s){s.textContent="live \u00b7 "+new Date().toLocaleTimeString();}
      if(d.final&&body.dataset.status&&d.status!==body.dataset.status){location.reload();return;}
      if(!d.final){setTimeout(tick,every);}
    })
    .catch(function(){body.dataset.liveStatus="error";setTimeout(tick,every*2);});
  }
  setTimeout(tick,+(body.dataset.first||every));
})();
