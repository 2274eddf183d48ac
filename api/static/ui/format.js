// Words for people: errors, byte counts, file names.
import { ApiError } from "./api.js";

export function words(error) {
  if (!(error instanceof ApiError) || error.status === 0) return error.message;
  return error.message + " (" + error.code + ", HTTP " + error.status + ")";
}

export function bytes(n) {
  if (n < 1024) return n + " B";
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KB";
  return (n / 1024 / 1024).toFixed(1) + " MB";
}

export function stem(name) {
  const dot = name.lastIndexOf(".");
  return dot > 0 ? name.slice(0, dot) : name;
}
