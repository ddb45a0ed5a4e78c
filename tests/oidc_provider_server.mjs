// A node oidc-provider (v9) for rotator's tests: client_credentials, RFC 7591 registration
// and RFC 7592 registration management, in memory, on 127.0.0.1:$PORT.
// $OIDC_PROVIDER_MODULE is the package's entry file (installed by scripts/setup.sh --tests).
import { pathToFileURL } from 'node:url';

const { default: Provider } = await import(pathToFileURL(process.env.OIDC_PROVIDER_MODULE).href);
const port = Number(process.env.PORT);
const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [],
  cookies: { keys: [process.env.COOKIE_KEY] },
  features: {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: false },
    registration: { enabled: true },
    registrationManagement: { enabled: true, rotateRegistrationAccessToken: true },
  },
});
provider.listen(port, '127.0.0.1', () => console.log(`listening on ${port}`));
