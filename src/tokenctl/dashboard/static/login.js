// A shared dashboard link (…/ui/#/sessions?team=web) survives sign-in: the page it named is sent with the key.
"use strict";
document.getElementById("next").value = location.hash.startsWith("#/") ? location.hash : "";
