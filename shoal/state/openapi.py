"""OpenAPI 3.0 schema of the state service's API (served at /openapi.json).

Written by hand because aiohttp does not derive one; tests/unit/test_state_api.py checks that every
route of the app is described here and nothing else is.
"""

from __future__ import annotations

from typing import Any

VERSION = "1.0.0"

_ERR = {
    "description": "malformed request",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_AUTH = {
    "401": {"description": "no credential"},
    "403": {"description": "credential refused or not an admin"},
}


def _json(ref: str, description: str = "OK") -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


def _body(ref: str) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


_NAME = [
    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}, "description": "node name"}
]
_404 = {"404": {"description": "no such node"}}


def schema() -> dict[str, Any]:
    obj = {"type": "object"}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "shoal node state service",
            "version": VERSION,
            "description": "Desired (cfg) and discovered (dsc) state of every node, the transition graph "
            "the engine drives, an event stream and Prometheus metrics. Reads are open; "
            "writes need `Authorization: Munge <credential>` (TCP) or an admin's peer "
            "credentials (unix socket).",
        },
        "components": {
            "securitySchemes": {
                "munge": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "'Munge ' + output of `munge -s PAYLOAD`, PAYLOAD = "
                    "'shoal-state-v1 METHOD PATH SHA256(body)'",
                },
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string"}, "hint": {"type": "string"}},
                },
                "Desired": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "string", "description": "layer1 image id ('' = keep)"},
                        "power": {"type": "string", "enum": ["on", "off"]},
                        "frozen": {"type": "boolean"},
                    },
                },
                "Discovered": {
                    "type": "object",
                    "properties": {
                        "alive": {"type": "boolean", "nullable": True},
                        "alive_at": {"type": "number"},
                        "image": {"type": "string"},
                        "programs": {"type": "object", "additionalProperties": {"type": "string"}},
                        "programs_since": {"type": "object", "additionalProperties": {"type": "number"}},
                        "programs_at": {"type": "number"},
                        "heartbeat": {"type": "number"},
                        "boot_id": {"type": "string"},
                        "slurm_state": {"type": "string"},
                        "slurm_flags": {"type": "array", "items": {"type": "string"}},
                        "slurm_reason": {"type": "string"},
                        "slurmd_start": {"type": "string"},
                        "slurm_at": {"type": "number"},
                    },
                },
                "Node": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "cfg": {"$ref": "#/components/schemas/Desired"},
                        "dsc": {"$ref": "#/components/schemas/Discovered"},
                        "phase": {"type": "string"},
                        "reason": {"type": "string"},
                        "health": {"type": "string"},
                        "health_reason": {"type": "string"},
                        "frozen": {"type": "boolean"},
                        "transition": {"type": "object", "nullable": True},
                    },
                },
                "Nodes": {
                    "type": "object",
                    "properties": {
                        "summary": obj,
                        "nodes": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}},
                    },
                },
                "SetDesired": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "image": {"type": "string", "example": "layer1:0123abcd"},
                        "power": {"type": "string", "enum": ["on", "off"]},
                        "max_unavailable": {"type": "integer", "minimum": 1},
                        "nodes": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "default: every node",
                        },
                    },
                },
                "SetNode": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "image": {"type": "string"},
                        "power": {"type": "string", "enum": ["on", "off"]},
                    },
                },
                "NodeSelection": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "nodes": {
                            "type": "array",
                            "items": {"type": "string"},
                            "description": "default: the whole cluster",
                        }
                    },
                },
                "NodeEvents": {
                    "type": "object",
                    "required": ["events"],
                    "additionalProperties": False,
                    "properties": {
                        "events": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["node", "kind"],
                                "properties": {
                                    "node": {"type": "string"},
                                    "kind": {"type": "string", "enum": ["process", "heartbeat", "hello"]},
                                    "program": {"type": "string"},
                                    "state": {"type": "string"},
                                    "from": {"type": "string"},
                                    "programs": {
                                        "type": "object",
                                        "additionalProperties": {"type": "string"},
                                    },
                                    "boot": {"type": "string"},
                                    "time": {"type": "number"},
                                },
                            },
                        }
                    },
                },
                "Graph": {
                    "type": "object",
                    "properties": {
                        "phases": {"type": "array", "items": {"type": "string"}},
                        "transitions": {"type": "array", "items": obj},
                        "discovered": {"type": "array", "items": obj},
                    },
                },
            },
        },
        "paths": {
            "/": {"get": {"summary": "service summary", "responses": {"200": _json("Nodes")}}},
            "/openapi.json": {"get": {"summary": "this schema", "responses": {"200": {"description": "OK"}}}},
            "/cfg/nodes": {
                "get": {
                    "summary": "desired state of every node",
                    "responses": {"200": {"description": "node name -> Desired"}},
                },
                "patch": {
                    "summary": "set desired state (image, power, max_unavailable) of nodes",
                    "security": [{"munge": []}],
                    "requestBody": _body("SetDesired"),
                    "responses": {"200": {"description": "changed"}, "400": _ERR, **_AUTH, **_404},
                },
            },
            "/cfg/nodes/{name}": {
                "parameters": _NAME,
                "get": {
                    "summary": "desired state of one node",
                    "responses": {"200": _json("Desired"), **_404},
                },
                "patch": {
                    "summary": "set one node's desired state",
                    "security": [{"munge": []}],
                    "requestBody": _body("SetNode"),
                    "responses": {"200": {"description": "changed"}, "400": _ERR, **_AUTH, **_404},
                },
            },
            "/dsc/nodes": {
                "get": {
                    "summary": "discovered state of every node",
                    "responses": {"200": {"description": "node name -> Discovered"}},
                }
            },
            "/dsc/nodes/{name}": {
                "parameters": _NAME,
                "get": {
                    "summary": "discovered state of one node",
                    "responses": {"200": _json("Discovered"), **_404},
                },
            },
            "/dsc/events": {
                "post": {
                    "summary": "events a node's supervisord listener reports (root on the node only)",
                    "security": [{"munge": []}],
                    "requestBody": _body("NodeEvents"),
                    "responses": {"200": {"description": "accepted"}, "400": _ERR, **_AUTH, **_404},
                }
            },
            "/nodes": {
                "get": {
                    "summary": "every node: desired, discovered, phase, health, transition",
                    "responses": {"200": _json("Nodes")},
                }
            },
            "/nodes/{name}": {
                "parameters": _NAME,
                "get": {"summary": "one node by name", "responses": {"200": _json("Node"), **_404}},
            },
            "/graph": {
                "get": {
                    "summary": "the transition graph the engine drives",
                    "responses": {"200": _json("Graph")},
                }
            },
            "/freeze": {
                "post": {
                    "summary": "stop driving nodes (default: the whole cluster)",
                    "security": [{"munge": []}],
                    "requestBody": _body("NodeSelection"),
                    "responses": {"200": {"description": "frozen"}, "400": _ERR, **_AUTH, **_404},
                }
            },
            "/thaw": {
                "post": {
                    "summary": "drive nodes again; clears a failed node's failure",
                    "security": [{"munge": []}],
                    "requestBody": _body("NodeSelection"),
                    "responses": {"200": {"description": "thawed"}, "400": _ERR, **_AUTH, **_404},
                }
            },
            "/events": {
                "get": {
                    "summary": "server-sent events (phase, transition, slurm, process, alive, ...)",
                    "parameters": [
                        {
                            "name": "after",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 0},
                            "description": "replay events with a larger id first (or Last-Event-ID)",
                        }
                    ],
                    "responses": {
                        "200": {"description": "text/event-stream"},
                        "400": _ERR,
                        "429": {"description": "this address has its limit of open streams (8)"},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus text format",
                    "responses": {"200": {"description": "text/plain; version=0.0.4"}},
                }
            },
        },
    }
