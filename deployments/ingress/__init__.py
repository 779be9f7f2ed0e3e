"""All of vlgraph's HTTP: the ingress deployment (:mod:`.deployment`), the app factory
(:mod:`.app`), the model gateway (:mod:`.gateway`), the one error mapper (:mod:`.errors`), the
request guards (:mod:`.guards`), the OpenAPI description (:mod:`.openapi`), request bodies
(:mod:`.uploads`) and one route module per API area (:mod:`.routes`). Nothing outside this
package imports FastAPI or Starlette."""
