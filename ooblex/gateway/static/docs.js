// /docs: Swagger UI on /openapi.json. Its files come from the swagger-ui-bundle-v2 package, served under
// /static/swagger-ui (no CDN), and this script is a file of its own: the page's CSP runs no inline script.
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  validatorUrl: null, // the default sends the API description to validator.swagger.io
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
