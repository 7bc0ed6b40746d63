"""The operation catalog: OpenAPI 3.0/3.1 backends → named operations with Draft 2020-12
argument schemas, tags for the policy, BM25 search, and SDK signatures/docstrings."""

from gateway.catalog.catalog import Catalog, operation_digest
from gateway.catalog.describe import (
    MAX_DESCRIBE_TOKENS,
    TokenCounter,
    describe_bounded,
    describe_document,
)
from gateway.catalog.loader import fetch_spec, fetch_spec_sync, load_catalog, load_catalog_sync
from gateway.catalog.openapi import operations_from_openapi, snake_case
from gateway.catalog.render import describe_operation, py_type, python_signature, sdk_doc

__all__ = [
    "MAX_DESCRIBE_TOKENS",
    "Catalog",
    "TokenCounter",
    "describe_bounded",
    "describe_document",
    "describe_operation",
    "fetch_spec",
    "fetch_spec_sync",
    "load_catalog",
    "load_catalog_sync",
    "operation_digest",
    "operations_from_openapi",
    "py_type",
    "python_signature",
    "sdk_doc",
    "snake_case",
]
