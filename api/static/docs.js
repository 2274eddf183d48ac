// Renders /openapi.json with swagger-ui (loaded before this file; both deferred, in order).
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  window.ui = window.SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    // the page's CSP allows requests to this origin only: no validator badge from elsewhere
    validatorUrl: null,
    persistAuthorization: false,
  });
});
