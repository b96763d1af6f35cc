"""Models and the Model Registry of the local SageMaker runtime.

* Models: ``CreateModel`` / ``DescribeModel`` / ``ListModels`` / ``DeleteModel``. A model's
  container is resolved once, at creation, into what serving needs (image, ``ModelDataUrl``,
  environment with ``SAGEMAKER_PROGRAM`` / ``SAGEMAKER_SUBMIT_DIRECTORY``); a container naming a
  ``ModelPackageName`` takes the package's first inference container, as SageMaker does.
* Model package groups and versioned model packages: ``Create``/``Describe``/``List``/
  ``Delete`` of groups, ``Create``/``Describe``/``List``/``Update``/``Delete`` of packages.
  Versions are numbered 1, 2, ... per group; ARNs follow
  ``arn:aws:sagemaker:<region>:<account>:model-package/<group lower>/<version>``.
* A versioned package's ``ModelApprovalStatus`` change (its creation included) emits
  SageMaker's "SageMaker Model Package State Change" event to moto's EventBridge
  (``registry_events.py``), so EventBridge rules route it as on AWS.

Errors follow what SageMaker answers (``ValidationException`` for unknown or duplicate names,
with AWS's messages where the Airflow provider parses them).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from local_stack.sagemaker_runtime import registry_events, tags
from local_stack.sagemaker_runtime.api import (
    SageMakerError,
    action,
    as_datetime,
    now,
    paginate,
    validate_name,
    validate_request,
    validation_error,
)

if TYPE_CHECKING:
    from local_stack.sagemaker_runtime.runtime import Runtime

MODELS = "Model"
GROUPS = "ModelPackageGroup"
PACKAGES = "ModelPackage"  # keyed by ARN

APPROVAL_STATUSES = ("Approved", "Rejected", "PendingManualApproval")


# --- shared list helpers -----------------------------------------------------------------------
def public(record: dict[str, Any]) -> dict[str, Any]:
    """A stored record without the runtime's private (``_``-prefixed) keys, deep-copied."""
    return copy.deepcopy({k: v for k, v in record.items() if not k.startswith("_")})


def filter_and_sort(
    records: list[dict[str, Any]],
    request: dict[str, Any],
    name_field: str,
    default_order: str,
    sort_fields: dict[str, str],
    status_field: str | None = None,
) -> list[dict[str, Any]]:
    """Apply the common ``List*`` filters (``NameContains``, ``CreationTime*``,
    ``LastModifiedTime*``, ``StatusEquals``) and ``SortBy``/``SortOrder``."""
    out = list(records)
    if request.get("NameContains"):
        needle = request["NameContains"].lower()
        out = [r for r in out if needle in r[name_field].lower()]
    for field, key, after in (
        ("CreationTimeAfter", "CreationTime", True),
        ("CreationTimeBefore", "CreationTime", False),
        ("LastModifiedTimeAfter", "LastModifiedTime", True),
        ("LastModifiedTimeBefore", "LastModifiedTime", False),
    ):
        if request.get(field) is not None:
            bound = as_datetime(request[field])
            out = [r for r in out if _time_ok(r.get(key) or r["CreationTime"], bound, after)]
    if status_field and request.get("StatusEquals"):
        out = [r for r in out if r.get(status_field) == request["StatusEquals"]]
    sort_by = request.get("SortBy") or "CreationTime"
    if sort_by not in sort_fields:
        raise validation_error(
            f"Value '{sort_by}' at 'sortBy' failed to satisfy constraint: Member must satisfy "
            f"enum value set: [{', '.join(sort_fields)}]"
        )
    order = request.get("SortOrder") or default_order
    if order not in ("Ascending", "Descending"):
        raise validation_error(
            f"Value '{order}' at 'sortOrder' failed to satisfy constraint: Member must satisfy "
            "enum value set: [Ascending, Descending]"
        )
    field = sort_fields[sort_by]
    # "_seq" breaks ties between records created within the same clock tick.
    out.sort(key=lambda r: (r.get(field) or "", r.get("_seq", 0)), reverse=order == "Descending")
    return out


def _time_ok(value: Any, bound: Any, after: bool) -> bool:
    return value > bound if after else value < bound


def _next_seq(runtime: Runtime) -> int:
    with runtime.lock:
        counters = runtime.store("_Counters").setdefault("seq", {"value": 0})
        counters["value"] += 1
        return counters["value"]


def page_response(items: list[dict[str, Any]], request: dict[str, Any], key: str) -> dict[str, Any]:
    """One page of ``items`` under ``key`` plus ``NextToken`` when more remain."""
    page, token = paginate(items, request)
    return {key: page, **({"NextToken": token} if token else {})}


# --- models ------------------------------------------------------------------------------------
def model_arn(runtime: Runtime, name: str) -> str:
    return runtime.arn("model", name)


def get_model(runtime: Runtime, name: str) -> dict[str, Any]:
    """The stored model (with its private ``_serving`` container); ``ValidationException`` as
    AWS answers when it does not exist."""
    with runtime.lock:
        model = runtime.store(MODELS).get(name)
    if model is None:
        raise validation_error(f'Could not find model "{model_arn(runtime, name)}".')
    return model


def serving_container(runtime: Runtime, model_name: str) -> dict[str, Any]:
    """What serving a model needs: ``Image``, ``ModelDataUrl``, ``Environment`` and the
    model's ``EnableNetworkIsolation``."""
    model = get_model(runtime, model_name)
    return {
        **copy.deepcopy(model["_serving"]),
        "EnableNetworkIsolation": model.get("EnableNetworkIsolation", False),
    }


def _resolve_container(runtime: Runtime, container: dict[str, Any]) -> dict[str, Any]:
    if container.get("ModelPackageName"):
        package = get_package(runtime, container["ModelPackageName"])
        containers = package.get("InferenceSpecification", {}).get("Containers", [])
        if not containers:
            raise validation_error(
                f"Model package {package['ModelPackageArn']} has no inference containers."
            )
        base = containers[0]
        environment = {**base.get("Environment", {}), **container.get("Environment", {})}
        return {
            "Image": container.get("Image") or base.get("Image"),
            "ModelDataUrl": container.get("ModelDataUrl") or base.get("ModelDataUrl"),
            "Environment": environment,
        }
    if not container.get("Image"):
        raise validation_error("A container definition needs an Image or a ModelPackageName.")
    return {
        "Image": container["Image"],
        "ModelDataUrl": container.get("ModelDataUrl") or _data_source_url(container),
        "Environment": dict(container.get("Environment", {})),
    }


def _data_source_url(container: dict[str, Any]) -> str | None:
    source = container.get("ModelDataSource", {}).get("S3DataSource")
    return source.get("S3Uri") if source else None


@action("CreateModel")
def create_model(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    validate_request("CreateModel", request)
    name = validate_name(request["ModelName"], "ModelName")
    containers = request.get("Containers") or []
    primary = request.get("PrimaryContainer") or (containers[0] if containers else None)
    if primary is None:
        raise validation_error("Either PrimaryContainer or Containers must be specified.")
    if request.get("PrimaryContainer") and containers:
        raise validation_error("PrimaryContainer and Containers cannot both be specified.")
    serving = _resolve_container(runtime, primary)
    arn = model_arn(runtime, name)
    record: dict[str, Any] = {
        "ModelName": name,
        "ModelArn": arn,
        "CreationTime": now(),
        "EnableNetworkIsolation": bool(request.get("EnableNetworkIsolation", False)),
        "_serving": serving,
        "_seq": _next_seq(runtime),
    }
    if request.get("PrimaryContainer"):
        record["PrimaryContainer"] = copy.deepcopy(request["PrimaryContainer"])
    else:
        record["Containers"] = copy.deepcopy(containers)
    for key in ("ExecutionRoleArn", "VpcConfig", "InferenceExecutionConfig"):
        if key in request:
            record[key] = copy.deepcopy(request[key])
    with runtime.lock:
        store = runtime.store(MODELS)
        if name in store:
            raise validation_error(f'Cannot create already existing model "{arn}".')
        store[name] = record
    tags.set_tags(runtime, arn, request.get("Tags"))
    return {"ModelArn": arn}


@action("DescribeModel")
def describe_model(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    validate_request("DescribeModel", request)
    return public(get_model(runtime, request["ModelName"]))


@action("ListModels")
def list_models(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    validate_request("ListModels", request)
    with runtime.lock:
        records = list(runtime.store(MODELS).values())
    items = filter_and_sort(
        records, request, "ModelName", "Descending", {"Name": "ModelName", "CreationTime": "_seq"}
    )
    summaries = [
        {"ModelName": r["ModelName"], "ModelArn": r["ModelArn"], "CreationTime": r["CreationTime"]}
        for r in items
    ]
    return page_response(summaries, request, "Models")


@action("DeleteModel")
def delete_model(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    validate_request("DeleteModel", request)
    name = request["ModelName"]
    with runtime.lock:
        record = runtime.store(MODELS).pop(name, None)
    if record is None:
        raise validation_error(f'Could not find model "{model_arn(runtime, name)}".')
    tags.forget(runtime, record["ModelArn"])
    return {}


# --- model package groups ----------------------------------------------------------------------
def group_arn(runtime: Runtime, name: str) -> str:
    return runtime.arn("model-package-group", name)


def _group_name(value: str) -> str:
    """A group name from a name or a model-package-group ARN."""
    if value.startswith("arn:"):
        return value.rsplit("/", 1)[-1]
    return value


def _find_group(runtime: Runtime, value: str) -> dict[str, Any] | None:
    name = _group_name(value)
    with runtime.lock:
        store = runtime.store(GROUPS)
        if name in store:
            return store[name]
        # ARNs are lower-cased: match them case-insensitively.
        for group in store.values():
            if group["ModelPackageGroupName"].lower() == name.lower() and value.startswith("arn:"):
                return group
    return None


@action("CreateModelPackageGroup")
def create_model_package_group(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    validate_request("CreateModelPackageGroup", request)
    name = validate_name(request["ModelPackageGroupName"], "ModelPackageGroupName")
    arn = group_arn(runtime, name)
    record = {
        "ModelPackageGroupName": name,
        "ModelPackageGroupArn": arn,
        "ModelPackageGroupDescription": request.get("ModelPackageGroupDescription", ""),
        "CreationTime": now(),
        "CreatedBy": {},
        "ModelPackageGroupStatus": "Completed",
        "_seq": _next_seq(runtime),
        "_versions": 0,
    }
    with runtime.lock:
        store = runtime.store(GROUPS)
        if name in store:
            # The Airflow provider's hook matches this message to detect an existing group.
            raise validation_error(f"Model Package Group already exists: {arn}")
        store[name] = record
    tags.set_tags(runtime, arn, request.get("Tags"))
    return {"ModelPackageGroupArn": arn}


@action("DescribeModelPackageGroup")
def describe_model_package_group(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    validate_request("DescribeModelPackageGroup", request)
    group = _find_group(runtime, request["ModelPackageGroupName"])
    if group is None:
        raise validation_error(
            f"ModelPackageGroup {_group_name(request['ModelPackageGroupName'])} does not exist."
        )
    return public(group)


@action("ListModelPackageGroups")
def list_model_package_groups(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    validate_request("ListModelPackageGroups", request)
    with runtime.lock:
        records = list(runtime.store(GROUPS).values())
    items = filter_and_sort(
        records,
        request,
        "ModelPackageGroupName",
        "Ascending",
        {"Name": "ModelPackageGroupName", "CreationTime": "_seq"},
    )
    keys = (
        "ModelPackageGroupName",
        "ModelPackageGroupArn",
        "ModelPackageGroupDescription",
        "CreationTime",
        "ModelPackageGroupStatus",
    )
    summaries = [{k: r[k] for k in keys if k in r} for r in items]
    return page_response(summaries, request, "ModelPackageGroupSummaryList")


@action("DeleteModelPackageGroup")
def delete_model_package_group(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    validate_request("DeleteModelPackageGroup", request)
    group = _find_group(runtime, request["ModelPackageGroupName"])
    if group is None:
        raise validation_error(
            f"ModelPackageGroup {_group_name(request['ModelPackageGroupName'])} does not exist."
        )
    name = group["ModelPackageGroupName"]
    with runtime.lock:
        members = [
            p for p in runtime.store(PACKAGES).values() if p.get("ModelPackageGroupName") == name
        ]
        if members:
            raise SageMakerError(
                "ConflictException",
                f"Model Package Group {name} still contains {len(members)} model package(s); "
                "delete them before deleting the group.",
            )
        runtime.store(GROUPS).pop(name, None)
    tags.forget(runtime, group["ModelPackageGroupArn"])
    return {}


# --- model packages ----------------------------------------------------------------------------
def get_package(runtime: Runtime, name_or_arn: str) -> dict[str, Any]:
    """A model package by ARN, ``<group>/<version>`` or unversioned name."""
    with runtime.lock:
        store = runtime.store(PACKAGES)
        if name_or_arn in store:
            return store[name_or_arn]
        wanted = name_or_arn.lower()
        for arn, package in store.items():
            if arn.lower() == wanted:
                return package
        suffix = f":model-package/{wanted}"
        for arn, package in store.items():
            if arn.lower().endswith(suffix):
                return package
    raise validation_error(f"ModelPackage {name_or_arn} does not exist.")


def _check_approval(status: str) -> None:
    if status not in APPROVAL_STATUSES:
        raise validation_error(
            f"Value '{status}' at 'modelApprovalStatus' failed to satisfy constraint: Member "
            f"must satisfy enum value set: [{', '.join(APPROVAL_STATUSES)}]"
        )


_COPIED_FIELDS = (
    "ModelPackageDescription",
    "InferenceSpecification",
    "ValidationSpecification",
    "SourceAlgorithmSpecification",
    "MetadataProperties",
    "ModelMetrics",
    "Domain",
    "Task",
    "SamplePayloadUrl",
    "CustomerMetadataProperties",
    "DriftCheckBaselines",
    "AdditionalInferenceSpecifications",
    "SkipModelValidation",
    "SourceUri",
    "SecurityConfig",
    "ModelCard",
    "ModelLifeCycle",
    "ModelPackageRegistrationType",
)


@action("CreateModelPackage")
def create_model_package(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    validate_request("CreateModelPackage", request)
    group_value = request.get("ModelPackageGroupName")
    if bool(group_value) == bool(request.get("ModelPackageName")):
        raise validation_error(
            "Exactly one of ModelPackageGroupName (versioned) or ModelPackageName (unversioned) "
            "must be specified."
        )
    if group_value and request.get("Tags"):
        # botocore's documentation of CreateModelPackage.Tags: with ModelPackageGroupName the
        # package "uses the tags associated with the model group. In this case, you cannot
        # supply a tag argument."
        raise validation_error(
            "Tags cannot be supplied with ModelPackageGroupName: a versioned model package uses "
            "the tags of its model package group."
        )
    approval = request.get("ModelApprovalStatus", "PendingManualApproval")
    _check_approval(approval)
    spec = request.get("InferenceSpecification")
    if spec is not None:
        for container in spec.get("Containers", []):
            if not container.get("Image"):
                raise validation_error("Each InferenceSpecification container needs an Image.")
    token = request.get("ClientToken")
    record = _new_package_record(runtime, request, approval)
    with runtime.lock:
        store = runtime.store(PACKAGES)
        if token:
            for package in store.values():
                if package.get("_client_token") == token and package.get("_group_request") == (
                    group_value or request.get("ModelPackageName")
                ):
                    return {"ModelPackageArn": package["ModelPackageArn"]}
        if group_value:
            group = _find_group(runtime, group_value)
            if group is None:
                raise validation_error(
                    f"Model Package Group {_group_name(group_value)} does not exist."
                )
            group["_versions"] += 1
            version = group["_versions"]
            group_name = group["ModelPackageGroupName"]
            arn = runtime.arn("model-package", f"{group_name}/{version}")
            # A versioned package has no name of its own: SageMaker returns no ModelPackageName
            # for it (aws/sagemaker-python-sdk#5606); it is addressed by ARN (or group/version).
            record.update(
                _name=group_name,
                ModelPackageGroupName=group_name,
                ModelPackageVersion=version,
                ModelPackageArn=arn,
            )
        else:
            name = validate_name(request["ModelPackageName"], "ModelPackageName")
            arn = runtime.arn("model-package", name)
            if arn in store:
                raise validation_error(f"Model Package {name} already exists: {arn}")
            record.update(ModelPackageName=name, _name=name, ModelPackageArn=arn)
        record["_client_token"] = token
        record["_group_request"] = group_value or request.get("ModelPackageName")
        store[arn] = record
        created = public(record) if group_value else None
    tags.set_tags(runtime, arn, request.get("Tags"))
    if created is not None:  # like AWS, a new version's status counts as a change
        registry_events.emit_state_change(runtime, created, created["CreationTime"])
    return {"ModelPackageArn": arn}


def _new_package_record(runtime: Runtime, request: dict[str, Any], approval: str) -> dict[str, Any]:
    """A new package's record before it is numbered/named: statuses and the copied fields."""
    record: dict[str, Any] = {
        "CreationTime": now(),
        "ModelPackageStatus": "Completed",
        "ModelPackageStatusDetails": {"ValidationStatuses": [], "ImageScanStatuses": []},
        "CertifyForMarketplace": bool(request.get("CertifyForMarketplace", False)),
        "ModelApprovalStatus": approval,
        "CreatedBy": {},
        "_seq": _next_seq(runtime),
    }
    for key in _COPIED_FIELDS:
        if key in request:
            record[key] = copy.deepcopy(request[key])
    return record


@action("DescribeModelPackage")
def describe_model_package(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    validate_request("DescribeModelPackage", request)
    return public(get_package(runtime, request["ModelPackageName"]))


@action("ListModelPackages")
def list_model_packages(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    validate_request("ListModelPackages", request)
    with runtime.lock:
        records = list(runtime.store(PACKAGES).values())
    group_value = request.get("ModelPackageGroupName")
    # The documented default is Unversioned, but SageMaker lists a group's versions when a group
    # is named without a type (what every registry example relies on).
    package_type = request.get("ModelPackageType") or (
        "Versioned" if group_value else "Unversioned"
    )
    if package_type not in ("Versioned", "Unversioned", "Both"):
        raise validation_error(
            f"Value '{package_type}' at 'modelPackageType' failed to satisfy constraint: Member "
            "must satisfy enum value set: [Versioned, Unversioned, Both]"
        )
    if package_type == "Versioned":
        records = [r for r in records if "ModelPackageGroupName" in r]
    elif package_type == "Unversioned":
        records = [r for r in records if "ModelPackageGroupName" not in r]
    if group_value:
        name = _group_name(group_value).lower()
        records = [r for r in records if r.get("ModelPackageGroupName", "").lower() == name]
    if request.get("ModelApprovalStatus"):
        _check_approval(request["ModelApprovalStatus"])
        records = [r for r in records if r["ModelApprovalStatus"] == request["ModelApprovalStatus"]]
    items = filter_and_sort(
        records, request, "_name", "Ascending", {"Name": "_name", "CreationTime": "_seq"}
    )
    keys = (
        "ModelPackageName",
        "ModelPackageGroupName",
        "ModelPackageVersion",
        "ModelPackageArn",
        "ModelPackageDescription",
        "CreationTime",
        "ModelPackageStatus",
        "ModelApprovalStatus",
        "ModelLifeCycle",
        "ModelPackageRegistrationType",
    )
    summaries = [{k: copy.deepcopy(r[k]) for k in keys if k in r} for r in items]
    return page_response(summaries, request, "ModelPackageSummaryList")


@action("UpdateModelPackage")
def update_model_package(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    validate_request("UpdateModelPackage", request)
    package = get_package(runtime, request["ModelPackageArn"])
    if "ModelApprovalStatus" in request:
        _check_approval(request["ModelApprovalStatus"])
    with runtime.lock:
        changed = (
            request.get("ModelApprovalStatus", package["ModelApprovalStatus"])
            != package["ModelApprovalStatus"]
        )
        if "ModelApprovalStatus" in request:
            package["ModelApprovalStatus"] = request["ModelApprovalStatus"]
        if "ApprovalDescription" in request:
            package["ApprovalDescription"] = request["ApprovalDescription"]
        if request.get("CustomerMetadataProperties") or request.get(
            "CustomerMetadataPropertiesToRemove"
        ):
            props = dict(package.get("CustomerMetadataProperties", {}))
            props.update(request.get("CustomerMetadataProperties", {}))
            for key in request.get("CustomerMetadataPropertiesToRemove", []):
                props.pop(key, None)
            package["CustomerMetadataProperties"] = props
        if request.get("AdditionalInferenceSpecificationsToAdd"):
            package.setdefault("AdditionalInferenceSpecifications", []).extend(
                copy.deepcopy(request["AdditionalInferenceSpecificationsToAdd"])
            )
        for key in ("InferenceSpecification", "SourceUri", "ModelCard", "ModelLifeCycle"):
            if key in request:
                package[key] = copy.deepcopy(request[key])
        if "ModelPackageRegistrationType" in request:
            package["ModelPackageRegistrationType"] = request["ModelPackageRegistrationType"]
        package["LastModifiedTime"] = now()
        package["LastModifiedBy"] = {}
        versioned = "ModelPackageGroupName" in package
        updated = public(package) if changed and versioned else None
    if updated is not None:
        registry_events.emit_state_change(runtime, updated, updated["LastModifiedTime"])
    return {"ModelPackageArn": package["ModelPackageArn"]}


@action("DeleteModelPackage")
def delete_model_package(runtime: Runtime, request: dict[str, Any]) -> dict[str, Any]:
    validate_request("DeleteModelPackage", request)
    package = get_package(runtime, request["ModelPackageName"])
    with runtime.lock:
        runtime.store(PACKAGES).pop(package["ModelPackageArn"], None)
    tags.forget(runtime, package["ModelPackageArn"])
    return {}
