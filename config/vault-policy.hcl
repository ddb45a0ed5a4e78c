# Least privilege for rotator on a KV v2 mount "secret" with clients under "apps/".
# Each client's credential lives at secret/apps/<name>; rotator also writes the sibling
# secret/apps/<name>.pending during a rotation and deletes it afterwards.
path "secret/data/apps/*" {
  capabilities = ["create", "read", "update"]
}
path "secret/metadata/apps/*" {
  capabilities = ["read", "update", "delete"]
}
# rotator checks its own permissions before it asks the IdP for a new secret.
path "sys/capabilities-self" {
  capabilities = ["update"]
}
# rotator checks that its token is valid when it starts (Vault's default policy grants this).
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
