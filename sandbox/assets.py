"""Asset API: static list assets and folders (envelopes always carry errors and warnings)."""

from __future__ import annotations

import json
from typing import Any

from sandbox.http import Call, MarketoError, Reply, asset_error, asset_not_found, asset_ok
from sandbox.schema import asset_time
from sandbox.state import Folder, SandboxState, StaticList

MAX_RETURN = 200


def list_asset(state: SandboxState, static_list: StaticList) -> dict[str, Any]:
    """A static list as the Asset API shows it."""
    return {
        "id": static_list.id,
        "name": static_list.name,
        "description": static_list.description,
        "createdAt": asset_time(static_list.created_at),
        "updatedAt": asset_time(static_list.updated_at),
        "folder": {"id": static_list.folder_id, "type": "Folder"},
        "workspace": static_list.workspace,
        "computedUrl": (f"https://app-sj01.marketo.com/#ST{static_list.id}A1"),
    }


def folder_asset(folder: Folder) -> dict[str, Any]:
    """A folder as the Asset API shows it."""
    parent = None if folder.parent_id is None else {"id": folder.parent_id, "type": "Folder"}
    return {
        "id": folder.id,
        "name": folder.name,
        "description": folder.description,
        "createdAt": asset_time(folder.created_at),
        "updatedAt": asset_time(folder.created_at),
        "url": None,
        "folderId": {"id": folder.id, "type": "Folder"},
        "folderType": "List",
        "parent": parent,
        "path": folder.path,
        "isArchive": False,
        "isSystem": folder.is_system,
        "accessZoneId": 1,
        "workspace": folder.workspace,
    }


def _folder_ref(state: SandboxState, raw: str | None, what: str) -> Folder:
    if not raw:
        raise MarketoError("701", f"{what} cannot be blank")
    try:
        ref = json.loads(raw)
        folder_id = int(ref["id"])
        folder_type = ref.get("type", "Folder")
    except (ValueError, TypeError, KeyError):
        raise MarketoError("1003", f"Invalid value for {what}") from None
    if folder_type != "Folder":
        raise MarketoError("711", "Incompatible folder type")
    folder = state.folders.get(folder_id)
    if folder is None:
        raise MarketoError("710", "Parent folder not found")
    return folder


async def create_list(call: Call) -> Reply:
    name = call.param("name")
    if not name:
        raise MarketoError("701", "name cannot be blank")
    folder = _folder_ref(call.state, call.param("folder"), "folder")
    if any(item.name == name for item in call.state.lists.values()):
        return asset_error("709", "Static List with the same name already exists")
    created = call.state.add_list(name, call.param("description") or "", folder, call.now)
    return asset_ok([list_asset(call.state, created)])


async def browse_lists(call: Call) -> Reply:
    items = list(call.state.lists.values())
    folder_raw = call.param("folder")
    if folder_raw:
        folder = _folder_ref(call.state, folder_raw, "folder")
        items = [item for item in items if item.folder_id == folder.id]
    offset = _number(call.param("offset"), 0)
    max_return = min(_number(call.param("maxReturn"), 20), MAX_RETURN)
    page = items[offset : offset + max_return]
    if not page:
        return asset_not_found()
    return asset_ok([list_asset(call.state, item) for item in page])


def _number(raw: str | None, default: int) -> int:
    if not raw:
        return default
    try:
        return max(0, int(raw))
    except ValueError:
        raise MarketoError("1003", f"Invalid value '{raw}'") from None


async def list_by_name(call: Call) -> Reply:
    name = call.param("name")
    if not name:
        raise MarketoError("701", "name cannot be blank")
    for item in call.state.lists.values():
        if item.name == name:
            return asset_ok([list_asset(call.state, item)])
    return asset_not_found()


def _find_list(call: Call) -> StaticList | None:
    try:
        return call.state.lists.get(int(call.path["list_id"]))
    except ValueError:
        return None


async def get_list(call: Call) -> Reply:
    found = _find_list(call)
    if found is None:
        return asset_not_found()
    return asset_ok([list_asset(call.state, found)])


async def update_list(call: Call) -> Reply:
    found = _find_list(call)
    if found is None:
        return asset_error("702", "Static List not found")
    name = call.param("name")
    if name and name != found.name:
        if any(item.name == name for item in call.state.lists.values()):
            return asset_error("709", "Static List with the same name already exists")
        found.name = name
    description = call.param("description")
    if description is not None:
        found.description = description
    found.updated_at = call.now
    return asset_ok([list_asset(call.state, found)])


async def delete_list(call: Call) -> Reply:
    found = _find_list(call)
    if found is None:
        return asset_error("702", "Static List not found")
    if call.state.list_in_use(found.id):
        return asset_error("709", "Static List is in use by an import and cannot be deleted")
    del call.state.lists[found.id]
    return asset_ok([{"id": found.id}])


async def folder_by_name(call: Call) -> Reply:
    name = call.param("name")
    if not name:
        raise MarketoError("701", "name cannot be blank")
    workspace = call.param("workSpace")
    matches = [
        folder_asset(folder)
        for folder in call.state.folders.values()
        if folder.name == name and (not workspace or folder.workspace == workspace)
    ]
    if not matches:
        return asset_not_found()
    return asset_ok(matches)


async def create_folder(call: Call) -> Reply:
    name = call.param("name")
    if not name:
        raise MarketoError("701", "name cannot be blank")
    parent = _folder_ref(call.state, call.param("parent"), "parent")
    for folder in call.state.folders.values():
        if folder.parent_id == parent.id and folder.name == name:
            return asset_error("709", "Folder with the same name already exists")
    created = call.state.add_folder(
        name, parent.id, parent.workspace, call.now, description=call.param("description") or ""
    )
    return asset_ok([folder_asset(created)])


async def browse_folders(call: Call) -> Reply:
    """Folders under `root` (itself included) down to `maxDepth` levels, in creation order."""
    folders = call.state.folders
    root_raw = call.param("root")
    root = _folder_ref(call.state, root_raw, "root") if root_raw else None
    max_depth = _number(call.param("maxDepth"), 2)
    workspace = call.param("workSpace")

    def depth_below_root(folder: Folder) -> int | None:
        depth = 0
        current: Folder | None = folder
        while current is not None:
            if root is None and current.parent_id is None:
                return depth
            if root is not None and current.id == root.id:
                return depth
            current = folders.get(current.parent_id) if current.parent_id is not None else None
            depth += 1
        return None

    matches = []
    for folder in folders.values():
        depth = depth_below_root(folder)
        if depth is None or depth > max_depth:
            continue
        if workspace and folder.workspace != workspace:
            continue
        matches.append(folder)
    offset = _number(call.param("offset"), 0)
    max_return = min(_number(call.param("maxReturn"), 20), MAX_RETURN)
    page = matches[offset : offset + max_return]
    if not page:
        return asset_not_found()
    return asset_ok([folder_asset(folder) for folder in page])
